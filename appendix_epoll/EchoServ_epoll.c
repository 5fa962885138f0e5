/*
 * appendix_epoll/EchoServ_epoll.c - the same echo server on Linux: edge-triggered epoll.
 *
 * Appendix to the seven Windows stages. One thread, every socket non-blocking, as in 02; but the
 * wait is epoll, not select, and it is edge-triggered (EPOLLET): epoll_wait reports a socket
 * when it BECOMES readable or writable, not while it is. Each socket is registered once, for both
 * directions, and never touched again with epoll_ctl. The price of edges: after an event the
 * program must read (or accept, or send) until the call fails with EAGAIN, or it will not hear
 * about that socket again. So every I/O here is a drain loop. (A recv that returns less than it
 * was asked for has drained the socket too, unless the client's FIN is behind: see ServeSession.)
 *
 * Readiness against completion (stages 03-07): epoll says "you may read now" and the program
 * then calls recv itself; IOCP says "your read is done", into a buffer the program lent the kernel
 * beforehand. Here the bytes wait in the socket's receive buffer (the kernel's memory) until recv
 * copies them out; the session's own buffer is never the kernel's, so closing a session never has
 * to wait for an outstanding I/O, as 05's stop must.
 *
 * What else it keeps from the stages, and how, on Linux:
 *   - backpressure as in 02: a session whose echo has not all gone out is not read again; its
 *     client's bytes wait in the kernel and TCP flow control stops the client.
 *   - fairness: a drain loop over a client that keeps sending could serve it forever (epoll(7),
 *     "Starvation"). A session gets ROUNDS_PER_TURN reads a turn; one not drained by then stays
 *     on a ready list and goes on next turn, after the others.
 *   - 1,000 clients; client 1,001 is accepted and closed at once, with a log line.
 *   - an accept() failure that would repeat (EMFILE: out of descriptors) pauses accepting for
 *     100 ms instead of spinning; the connection waits in the backlog meanwhile.
 *   - Ctrl+C (SIGINT) and SIGTERM arrive as readable descriptors in the same epoll set (a pipe
 *     written by SIGINT's handler; a signalfd), so the loop sees them like any other event and
 *     stops gracefully: it closes every session and prints the stages' Shutdown line. A second
 *     Ctrl+C ends the process at once, as in the stages, even if the loop is stuck (a full stdout).
 *   - SIGPIPE is ignored: a write to a client gone away (send() has MSG_NOSIGNAL as well), or a
 *     log line to a stdout whose reader went away (`| head`, a log collector that quit), fails
 *     with EPIPE instead of killing the server and dropping every client.
 *
 * Build: cc -std=c11 -pedantic -Wall -Wextra -Wvla -O2 -o EchoServ_epoll EchoServ_epoll.c
 * Run:   ./EchoServ_epoll <port>      (0 picks a free port)
 */
#define _GNU_SOURCE /* accept4() and SOCK_NONBLOCK: Linux's, like epoll and signalfd */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "../common/Trace.h" /* --trace FILE: the recorder behind the pictures, off unless asked */

#define BUF_SIZE 8192
#define ACCEPT_BACKOFF_MS 100 /* no accept() for this long after a failure that would repeat */
#define MAX_CLIENTS 1000
#define MAX_EVENTS 256        /* events taken per epoll_wait; more simply wait for the next turn */
#define ROUNDS_PER_TURN 16    /* reads a session gets per turn before the others' turn comes */
#define ACCEPTS_PER_TURN 64   /* the same for the listening socket */

/* The write end of the Ctrl+C pipe: a global because a signal handler gets no parameter. */
static volatile sig_atomic_t ctrlCWriteFd = -1;

/* ---------------------------------------------------------------- errors and log lines
 * The Linux counterpart of common/ErrorHandling.h (a Windows header): the same line shapes, with
 * errno's name and strerror's text:
 *   bind() failed: error 98 (EADDRINUSE): Address already in use */

typedef struct {
    int code;
    const char *name;
} ERROR_NAME;

/* The codes a socket program meets most, with their names (what to search for). */
static const ERROR_NAME knownErrors[] = {
    {EINTR, "EINTR"}, {EACCES, "EACCES"}, {EINVAL, "EINVAL"}, {EMFILE, "EMFILE"},
    {ENFILE, "ENFILE"}, {ENOBUFS, "ENOBUFS"}, {ENOMEM, "ENOMEM"}, {EAGAIN, "EAGAIN"},
    {EPIPE, "EPIPE"}, {EADDRINUSE, "EADDRINUSE"}, {EADDRNOTAVAIL, "EADDRNOTAVAIL"},
    {ECONNABORTED, "ECONNABORTED"}, {ECONNRESET, "ECONNRESET"}, {ECONNREFUSED, "ECONNREFUSED"},
    {ENOTCONN, "ENOTCONN"}, {ETIMEDOUT, "ETIMEDOUT"}, {EHOSTUNREACH, "EHOSTUNREACH"},
    {ENETUNREACH, "ENETUNREACH"}, {EPROTO, "EPROTO"},
};

static const char *ErrorName(int code)
{
    size_t i;
    for (i = 0; i < sizeof(knownErrors) / sizeof(knownErrors[0]); i++)
        if (knownErrors[i].code == code)
            return knownErrors[i].name;
    return NULL;
}

/* Writes one whole line at once and flushes it, so that a pipe sees each line as it happens. */
static void WriteLine(FILE *stream, const char *line)
{
    fwrite(line, 1, strlen(line), stream);
    fflush(stream);
}

/* One log line on stdout: printf's format and arguments, the newline added here. */
static void LogLine(const char *format, ...)
{
    char line[1024];
    va_list args;
    int len;

    va_start(args, format);
    len = vsnprintf(line, sizeof(line) - 1, format, args);
    va_end(args);
    if (len < 0)
        return;
    if (len > (int)sizeof(line) - 2) /* cut to fit: a log line, never a payload */
        len = (int)sizeof(line) - 2;
    line[len] = '\n';
    line[len + 1] = '\0';
    WriteLine(stdout, line);
}

/* A per-connection failure: report it on stderr and return, so the caller closes that connection. */
static void ReportError(const char *funcName, int code)
{
    char line[1024];
    const char *name = ErrorName(code);

    if (name != NULL)
        snprintf(line, sizeof(line), "%s failed: error %d (%s): %s\n", funcName, code, name,
                 strerror(code));
    else
        snprintf(line, sizeof(line), "%s failed: error %d: %s\n", funcName, code, strerror(code));
    WriteLine(stderr, line);
}

/* A failure the program cannot go on after (start-up): report errno and exit with code 1. */
static void ErrorHandling(const char *funcName)
{
    ReportError(funcName, errno);
    exit(1);
}

/* ---------------------------------------------------------------- the server's state */

/* One connected client. buf holds bytes received and not yet echoed: buf[sendPos..sendLen). */
typedef struct SESSION {
    int hClntSock;
    char peer[64];
    char buf[BUF_SIZE];
    int sendPos, sendLen;
    bool peerClosed;                       /* an event said EPOLLRDHUP, EPOLLHUP or EPOLLERR */
    struct SESSION *prev, *next;           /* in the server's list of sessions, for the stop */
    bool ready;                            /* on the ready list: not drained yet */
    struct SESSION *readyPrev, *readyNext;
} SESSION;

/* What the loop works with. epoll hands back the data.ptr each descriptor was registered with: a
 * SESSION, or the address of one of the two markers below. */
typedef struct {
    int hEpoll, hServSock, hSignal, hCtrlC;
    char listenerMark, signalMark, ctrlCMark;
    SESSION *sessions;                     /* every open session */
    int numSessions;
    SESSION *readyHead, *readyTail;        /* sessions that may still have work, oldest first */
    bool listenerReady;                    /* connections may wait in the backlog */
    long long acceptPausedUntil;           /* ms on the monotonic clock; 0: accepting */
    bool stopping;
    long numAccepted, numClosed;
    long long bytesEchoed;
} SERVER;

/* Reads the one argument, a port from 0 to 65535; anything else prints the usage and exits 1. */
static unsigned short ParsePort(int argc, char *argv[])
{
    char *end = NULL;
    long port = -1;

    argc = TraceOption(argc, argv); /* `<port> --trace FILE` (common/Trace.h): takes it off */
    if (argc == 2)
        port = strtol(argv[1], &end, 10);
    if (argc != 2 || end == argv[1] || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "Usage: %s <port>   (0 to 65535; 0 picks a free port)\n", argv[0]);
        exit(1);
    }
    return (unsigned short)port;
}

static long long NowMs(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* SIGTERM becomes a readable descriptor: blocked here, before anything else, so that it cannot
 * end the process the default way, and read from the epoll loop instead. */
static int OpenSignalFd(void)
{
    sigset_t mask;
    int hSignal;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0)
        ErrorHandling("sigprocmask()");
    hSignal = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (hSignal < 0)
        ErrorHandling("signalfd()");
    return hSignal;
}

/* The first Ctrl+C: one byte into the pipe, which the epoll loop reads as a stop request.
 * SA_RESETHAND has put SIGINT back to its default action on the way in, so the second Ctrl+C
 * ends the process at once. write() is async-signal-safe; errno is kept for the code we broke in. */
static void OnCtrlC(int signo)
{
    int savedErrno = errno;
    char byte = 'C';

    (void)signo;
    if (write(ctrlCWriteFd, &byte, 1) < 0) {
        /* the pipe is full: a stop request is in it already */
    }
    errno = savedErrno;
}

/* SIGINT (Ctrl+C) gets a handler, not the signalfd: a blocked SIGINT is only seen when the loop
 * reads it, and a second one while the first still waits merges with it, so a loop stuck in a
 * write to a full stdout could never count two. A handler runs whatever the loop is doing.
 * SA_RESTART: the write it interrupted goes on afterwards, instead of failing with EINTR.
 * Returns the pipe's read end, for the epoll set. */
static int OpenCtrlCPipe(void)
{
    int fds[2];
    struct sigaction action;

    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) /* the handler must never block */
        ErrorHandling("pipe2()");
    ctrlCWriteFd = fds[1];
    memset(&action, 0, sizeof(action));
    action.sa_handler = OnCtrlC;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND | SA_RESTART;
    if (sigaction(SIGINT, &action, NULL) != 0)
        ErrorHandling("sigaction()");
    return fds[0];
}

/* SIGPIPE's default action ends the process at the first write to a pipe or socket whose reader
 * has gone. A server would die of a closed stdout: ignored, such a write fails with EPIPE (a log
 * line is lost; Windows, which has no SIGPIPE, fails the write the same way). */
static void IgnoreSigPipe(void)
{
    struct sigaction action;

    memset(&action, 0, sizeof(action));
    action.sa_handler = SIG_IGN;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGPIPE, &action, NULL) != 0)
        ErrorHandling("sigaction()");
}

/* socket, bind, listen; prints "Listening on port N" with the real port (port 0 picks one). */
static int OpenListenSocket(unsigned short port)
{
    int hServSock, on = 1;
    struct sockaddr_in servAdr;
    socklen_t adrSz = sizeof(servAdr);

    /* Non-blocking from the start: accept() returns EAGAIN once the backlog is drained. */
    hServSock = socket(PF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (hServSock < 0)
        ErrorHandling("socket()");
    /* On Linux SO_REUSEADDR only lets a restarted server bind while old connections sit in
       TIME_WAIT; it never lets two listeners share a port (on Windows it would: see PITFALLS). */
    if (setsockopt(hServSock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0)
        ErrorHandling("setsockopt()");

    memset(&servAdr, 0, sizeof(servAdr));
    servAdr.sin_family = AF_INET;
    servAdr.sin_addr.s_addr = htonl(INADDR_ANY);
    servAdr.sin_port = htons(port);
    if (bind(hServSock, (struct sockaddr *)&servAdr, sizeof(servAdr)) != 0)
        ErrorHandling("bind()");
    /* SOMAXCONN, not 5: with a small backlog most of a burst of clients is refused or waits. */
    if (listen(hServSock, SOMAXCONN) != 0)
        ErrorHandling("listen()");

    if (getsockname(hServSock, (struct sockaddr *)&servAdr, &adrSz) != 0)
        ErrorHandling("getsockname()");
    LogLine("Listening on port %u", ntohs(servAdr.sin_port));
    return hServSock;
}

/* "127.0.0.1:54321", for the log. */
static void FormatAddress(const struct sockaddr_in *adr, char *text, size_t textSize)
{
    char host[INET_ADDRSTRLEN] = "?";
    getnameinfo((const struct sockaddr *)adr, sizeof(*adr), host, sizeof(host), NULL, 0,
                NI_NUMERICHOST);
    snprintf(text, textSize, "%s:%u", host, ntohs(adr->sin_port));
}

/* Registers a descriptor once, edge-triggered, for everything it may become ready for. */
static bool WatchEdges(SERVER *server, int fd, void *ptr)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    /* EPOLLRDHUP: the peer's FIN (EPOLLERR and EPOLLHUP come without asking). */
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = ptr;
    return epoll_ctl(server->hEpoll, EPOLL_CTL_ADD, fd, &ev) == 0;
}

/* ---------------------------------------------------------------- the ready list */

static void MarkReady(SERVER *server, SESSION *session)
{
    if (session->ready)
        return;
    session->ready = true;
    session->readyNext = NULL;
    session->readyPrev = server->readyTail;
    if (server->readyTail != NULL)
        server->readyTail->readyNext = session;
    else
        server->readyHead = session;
    server->readyTail = session;
}

static void UnmarkReady(SERVER *server, SESSION *session)
{
    if (!session->ready)
        return;
    session->ready = false;
    if (session->readyPrev != NULL)
        session->readyPrev->readyNext = session->readyNext;
    else
        server->readyHead = session->readyNext;
    if (session->readyNext != NULL)
        session->readyNext->readyPrev = session->readyPrev;
    else
        server->readyTail = session->readyPrev;
}

/* ---------------------------------------------------------------- one session */

/* What serving a session came to. */
typedef enum { SESSION_WAIT, SESSION_MORE, SESSION_CLOSE } SESSION_STATE;

/* Sends what waits in the session's buffer, until it is all out or send() would block.
 * Returns SESSION_MORE when the buffer is empty, SESSION_WAIT when the socket's send buffer is full
 * (the EPOLLOUT edge will say when it has room), SESSION_CLOSE on an error. */
static SESSION_STATE SendPending(SERVER *server, SESSION *session)
{
    while (session->sendPos < session->sendLen) {
        ssize_t sent = send(session->hClntSock, session->buf + session->sendPos,
                            (size_t)(session->sendLen - session->sendPos), MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return SESSION_WAIT;
            ReportError("send()", errno); /* EPIPE, ECONNRESET: the client has gone */
            return SESSION_CLOSE;
        }
        session->sendPos += (int)sent;
        Trace(TRACE_SENT, (unsigned long long)session->hClntSock, (unsigned long)sent);
        server->bytesEchoed += sent;
    }
    return SESSION_MORE;
}

/* Echoes what the client has sent, in rounds of one recv() and its send(), until a call fails with
 * EAGAIN (drained: the next edge will say when there is more), the client closes, or the turn's
 * rounds are used up (SESSION_MORE: it stays on the ready list). A session whose echo has not gone
 * out is not read: its client's next bytes wait in the kernel's receive buffer.
 * A short read ends the drain as EAGAIN would: recv() returned less than asked, so the receive
 * buffer was empty, and bytes that come later make a new edge (epoll(7) allows this for stream
 * sockets; it saves one recv() a message). Except once the peer has closed: its FIN may already
 * sit behind those bytes, announced by an edge that is past, so read on to the 0. */
static SESSION_STATE ServeSession(SERVER *server, SESSION *session)
{
    int round;

    for (round = 0; round < ROUNDS_PER_TURN; round++) {
        SESSION_STATE state = SendPending(server, session);
        ssize_t strLen;

        if (state != SESSION_MORE)
            return state;
        strLen = recv(session->hClntSock, session->buf, BUF_SIZE, 0);
        if (strLen == 0)
            return SESSION_CLOSE; /* the client closed (or half-closed); all was echoed */
        if (strLen < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return SESSION_WAIT; /* drained: the receive buffer is empty */
            ReportError("recv()", errno); /* e.g. ECONNRESET: the client reset */
            return SESSION_CLOSE;
        }
        Trace(TRACE_RECV, (unsigned long long)session->hClntSock, (unsigned long)strLen);
        session->sendPos = 0;
        session->sendLen = (int)strLen;
        if (strLen < BUF_SIZE && !session->peerClosed) {
            state = SendPending(server, session);
            return state == SESSION_MORE ? SESSION_WAIT : state; /* drained, echo sent or waiting */
        }
    }
    return SESSION_MORE;
}

/* close() also takes the socket out of the epoll set. No I/O of ours is outstanding: the kernel
 * holds no pointer into the session, so it can be freed at once. */
static void CloseSession(SERVER *server, SESSION *session)
{
    UnmarkReady(server, session);
    if (session->prev != NULL)
        session->prev->next = session->next;
    else
        server->sessions = session->next;
    if (session->next != NULL)
        session->next->prev = session->prev;
    server->numSessions--;

    Trace(TRACE_CLOSED, (unsigned long long)session->hClntSock, 0);
    close(session->hClntSock);
    server->numClosed++;
    LogLine("Closed client %s", session->peer);
    free(session);
}

/* ---------------------------------------------------------------- accepting */

/* Accepts one waiting client. Returns false once the backlog is drained (EAGAIN) or accepting
 * must pause; true if the caller may go on accepting. */
static bool AcceptClient(SERVER *server)
{
    int hClntSock;
    struct sockaddr_in clntAdr;
    socklen_t adrSz = sizeof(clntAdr);
    SESSION *session;

    /* accept4: unlike Winsock's accept, Linux's does not pass O_NONBLOCK on to the new socket. */
    hClntSock = accept4(server->hServSock, (struct sockaddr *)&clntAdr, &adrSz,
                        SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (hClntSock < 0) {
        int err = errno;
        if (err == EINTR)
            return true;
        if (err == EAGAIN || err == EWOULDBLOCK) {
            server->listenerReady = false; /* drained: the next edge says when one comes */
            return false;
        }
        ReportError("accept()", err);
        /* Out of descriptors or memory would fail again at once: pause accepting for a while
           (the listener stays "ready", so the loop comes back to it when the pause ends). Any
           other failure (ECONNABORTED: reset in the backlog; EPROTO and the network errors
           accept(2) says to treat like EAGAIN) concerns one connection: go on. */
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
            server->acceptPausedUntil = NowMs() + ACCEPT_BACKOFF_MS;
            return false;
        }
        return true;
    }
    server->numAccepted++;
    if (server->numSessions == MAX_CLIENTS) {
        char peer[64];
        FormatAddress(&clntAdr, peer, sizeof(peer));
        LogLine("Too many clients (%d): closed %s", MAX_CLIENTS, peer);
        close(hClntSock);
        server->numClosed++;
        return true;
    }
    session = calloc(1, sizeof(*session));
    if (session == NULL) {
        ReportError("calloc()", ENOMEM);
        close(hClntSock);
        server->numClosed++;
        return true;
    }
    session->hClntSock = hClntSock;
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    session->next = server->sessions;
    if (server->sessions != NULL)
        server->sessions->prev = session;
    server->sessions = session;
    server->numSessions++;
    Trace(TRACE_ACCEPTED, (unsigned long long)session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
    /* Bytes that came before this are not lost: registering reports what is ready already. */
    if (!WatchEdges(server, hClntSock, session)) {
        ReportError("epoll_ctl()", errno);
        CloseSession(server, session);
    }
    return true;
}

/* Drains the backlog, ACCEPTS_PER_TURN at most, unless accepting is paused. */
static void AcceptClients(SERVER *server)
{
    int i;

    if (server->acceptPausedUntil != 0) {
        if (NowMs() < server->acceptPausedUntil)
            return;
        server->acceptPausedUntil = 0;
    }
    for (i = 0; i < ACCEPTS_PER_TURN && server->listenerReady; i++)
        if (!AcceptClient(server))
            break;
}

/* ---------------------------------------------------------------- the loop */

/* How long epoll_wait may wait: not at all while something is known to have work left; until the
 * pause ends while accepting is paused; else until the next event. */
static int WaitTimeoutMs(const SERVER *server)
{
    if (server->readyHead != NULL)
        return 0;
    if (server->listenerReady) {
        long long left;
        if (server->acceptPausedUntil == 0)
            return 0;
        left = server->acceptPausedUntil - NowMs();
        return left <= 0 ? 0 : (int)left;
    }
    return -1;
}

/* SIGTERM has come: read it, so the descriptor is drained too, and stop. */
static void OnSignal(SERVER *server)
{
    struct signalfd_siginfo info;

    while (read(server->hSignal, &info, sizeof(info)) == (ssize_t)sizeof(info))
        server->stopping = true;
}

/* Ctrl+C has come (its handler wrote to the pipe): drain the pipe, and stop. */
static void OnCtrlCPipe(SERVER *server)
{
    char bytes[16];

    while (read(server->hCtrlC, bytes, sizeof(bytes)) > 0)
        server->stopping = true;
}

/* One turn over the ready list as it stands: each session drains, or goes on next turn. */
static void ServeReadySessions(SERVER *server)
{
    SESSION *last = server->readyTail, *session;
    bool done = (last == NULL);

    while (!done) {
        SESSION_STATE state;
        session = server->readyHead;
        done = (session == last); /* sessions marked from here on wait for the next turn */
        UnmarkReady(server, session);
        state = ServeSession(server, session);
        if (state == SESSION_CLOSE)
            CloseSession(server, session);
        else if (state == SESSION_MORE)
            MarkReady(server, session); /* to the back: the others go first */
    }
}

/* The epoll loop: one thread, every client. Returns once a signal asked it to stop. */
static void ServeClients(SERVER *server)
{
    struct epoll_event events[MAX_EVENTS];

    while (!server->stopping) {
        int n, i;

        n = epoll_wait(server->hEpoll, events, MAX_EVENTS, WaitTimeoutMs(server));
        if (n < 0) {
            if (errno == EINTR)
                continue; /* a signal we do not block (a debugger's SIGCONT...): wait again */
            ErrorHandling("epoll_wait()"); /* only a bug (a bad descriptor) makes it fail */
        }
        /* An event only says who became ready; the ready list remembers it until drained. */
        for (i = 0; i < n; i++) {
            void *ptr = events[i].data.ptr;
            if (ptr == &server->signalMark)
                OnSignal(server);
            else if (ptr == &server->ctrlCMark)
                OnCtrlCPipe(server);
            else if (ptr == &server->listenerMark)
                server->listenerReady = true;
            else {
                SESSION *session = ptr;
                if (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    session->peerClosed = true; /* sticky: from now on, read to the end */
                MarkReady(server, session);
            }
        }
        if (server->stopping)
            break;
        ServeReadySessions(server);
        AcceptClients(server);
    }
}

/* The epoll set, with the listening socket and the signals in it. */
static void StartServer(SERVER *server, int hServSock, int hSignal, int hCtrlC)
{
    memset(server, 0, sizeof(*server));
    server->hServSock = hServSock;
    server->hSignal = hSignal;
    server->hCtrlC = hCtrlC;
    server->hEpoll = epoll_create1(EPOLL_CLOEXEC);
    if (server->hEpoll < 0)
        ErrorHandling("epoll_create1()");
    if (!WatchEdges(server, hServSock, &server->listenerMark))
        ErrorHandling("epoll_ctl()");
    if (!WatchEdges(server, hSignal, &server->signalMark))
        ErrorHandling("epoll_ctl()");
    if (!WatchEdges(server, hCtrlC, &server->ctrlCMark))
        ErrorHandling("epoll_ctl()");
}

/* The graceful stop: stop accepting, close every session, free everything. Nothing to cancel or
 * wait for, unlike 05: no I/O of ours is ever outstanding in the kernel. */
static void StopServer(SERVER *server)
{
    LogLine("Stopping (Ctrl+C again ends the process at once)");
    close(server->hServSock);
    while (server->sessions != NULL)
        CloseSession(server, server->sessions);
    close(server->hSignal);
    close(server->hEpoll);
    /* the pipe stays open: SIGINT's default action is back, so no handler writes to it again,
       and the process ends in a moment */
}

int main(int argc, char *argv[])
{
    SERVER server;
    unsigned short port = ParsePort(argc, argv);
    int hSignal = OpenSignalFd(); /* first: a signal right after "Listening" is already ours */
    int hCtrlC = OpenCtrlCPipe();
    int hServSock;

    IgnoreSigPipe(); /* before "Listening": its reader may already be gone */
    hServSock = OpenListenSocket(port);

    StartServer(&server, hServSock, hSignal, hCtrlC);
    ServeClients(&server);
    StopServer(&server);
    TraceWrite(); /* with --trace: every record, to its file, before the last line */
    LogLine("Shutdown: %ld accepted, %ld closed, %lld bytes echoed",
            server.numAccepted, server.numClosed, server.bytesEchoed);
    return 0;
}
