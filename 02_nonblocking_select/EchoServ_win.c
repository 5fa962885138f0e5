/*
 * 02_nonblocking_select/EchoServ_win.c - a non-blocking echo server with select().
 *
 * Stage 2 of 7: non-blocking sockets and select().
 *
 * What this stage teaches:
 * One thread serves many clients: every socket is non-blocking (ioctlsocket FIONBIO), and select()
 * says which ones can be read or written without blocking.
 * A call that would block fails at once with WSAEWOULDBLOCK instead, and the loop just goes on to
 * the next socket.
 *
 * Changed from the previous stage:
 * The loop over one client becomes a select() loop over a session per client, so no client waits
 * for another one to leave.
 *
 * What the book / notes do, and what we do instead:
 * The notes show ioctlsocket(FIONBIO) and warn that non-blocking calls can take the CPU to 100%:
 * here select() sleeps until a socket is ready (experiments/busy_poll.diff polls without it).
 * The part the famous samples skip is the short send below.
 *
 * Handled here:
 *   - a 0-byte read (the client closed) or an error (a reset) ends that client only.
 *   - a failed accept concerns one connection (e.g. it was reset while waiting): log, go on.
 *   - payloads are bytes, never strings: no str* function touches them.
 *   - send() on a non-blocking socket takes only what fits in the socket's send buffer (or nothing:
 *     WSAEWOULDBLOCK): the rest waits in the session's buffer, and the socket goes into the write
 *     set.
 *   - the session is not read again until that buffer is empty, so a client that sends and never
 *     reads cannot grow the server's memory (TCP flow control stops it at its own send buffer), and
 *     it never stalls the other clients.
 *   - the limit: an fd_set holds FD_SETSIZE sockets (64 on Windows unless a program defines it
 *     before including winsock2.h; any larger value works); the listening socket takes one slot, so
 *     this server serves FD_SETSIZE - 1 = 63 clients; one more is accepted and closed at once.
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -o EchoServ_win.exe EchoServ_win.c -lws2_32
 * Run:   EchoServ_win.exe <port>      (0 picks a free port)
 */
#define FD_SETSIZE 64 /* the default, spelled out: must come before winsock2.h to change it */
/* Declare what Windows Vista added (GetTickCount64, CancelIoEx, SRW locks, WSAPoll): an older
 * MinGW-w64 (TDM-GCC, Dev-C++'s) targets Windows Server 2003 (0x0502) unless told, and would
 * leave them undeclared. */
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0600
#endif
#if _WIN32_WINNT < 0x0600
#error "build for Windows Vista or later: _WIN32_WINNT 0x0600 or more"
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../common/ErrorHandling.h"
#include "../common/Trace.h" /* --trace FILE: the recorder behind the pictures, off unless asked */

#define BUF_SIZE 8192
#define ACCEPT_BACKOFF_MS 100 /* no accept() for this long after a failure that would repeat */
#define MAX_CLIENTS (FD_SETSIZE - 1) /* the listening socket takes one slot of the read set */

/* One connected client. buf holds bytes received and not yet echoed: buf[sendPos..sendLen). */
typedef struct {
    SOCKET hClntSock;
    char peer[64];
    char buf[BUF_SIZE];
    int sendPos, sendLen;
} SESSION;

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

/* Ctrl+C / Ctrl+Break: nothing here needs saving, so the process ends at once; Windows then
 * closes every socket. (05-07 stop gracefully instead.) A handler must never block (common/ says
 * why): the Stopping line gets 500 ms, and EndProcessNow ends the process rather than "return
 * FALSE", whose default handler can hang while another thread is stuck writing to stdout. */
static BOOL WINAPI CtrlHandler(DWORD ctrlType)
{
    /* Closing the console window, End task: the default handler's ExitProcess can hang while a
       thread is blocked writing stdout (common/ErrorHandling.h); the system ends the process a
       few seconds later anyway. As the second Ctrl+C: at once.
       (learn.microsoft.com/windows/console/ctrl-close-signal) */
    if (ctrlType == CTRL_CLOSE_EVENT)
        EndProcessNow();
    if (ctrlType != CTRL_C_EVENT && ctrlType != CTRL_BREAK_EVENT)
        return FALSE;
    EndAtSecondCtrlC();
    LogLineWithin(500, "Stopping");
    TraceWrite(); /* with --trace: every record, to its file */
    EndProcessNow();
    return TRUE; /* not reached */
}

/* socket, bind, listen; prints "Listening on port N" with the real port (port 0 picks one). */
static SOCKET OpenListenSocket(unsigned short port)
{
    SOCKET hServSock;
    SOCKADDR_IN servAdr;
    int adrSz = sizeof(servAdr);
    BOOL exclusive = TRUE;
    u_long nonBlocking = 1;

    hServSock = socket(PF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("socket()");
    /* accept() now returns at once (WSAEWOULDBLOCK when nobody waits), and the sockets it
       returns inherit the non-blocking mode. */
    if (ioctlsocket(hServSock, FIONBIO, &nonBlocking) == SOCKET_ERROR)
        ErrorHandling("ioctlsocket()");

    memset(&servAdr, 0, sizeof(servAdr));
    servAdr.sin_family = AF_INET;
    servAdr.sin_addr.s_addr = htonl(INADDR_ANY);
    servAdr.sin_port = htons(port);
    /* Before bind: no other socket may bind this port while we hold it, not even one that asks
       with SO_REUSEADDR (Windows would let it, and hand it some of our clients). */
    if (setsockopt(hServSock, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&exclusive,
                   sizeof(exclusive)) == SOCKET_ERROR)
        ErrorHandling("setsockopt(SO_EXCLUSIVEADDRUSE)");
    if (bind(hServSock, (SOCKADDR *)&servAdr, sizeof(servAdr)) == SOCKET_ERROR)
        ErrorHandling("bind()");
    /* SOMAXCONN, not 5: with a small backlog most of a burst of clients is refused or waits. */
    if (listen(hServSock, SOMAXCONN) == SOCKET_ERROR)
        ErrorHandling("listen()");

    if (getsockname(hServSock, (SOCKADDR *)&servAdr, &adrSz) == SOCKET_ERROR)
        ErrorHandling("getsockname()");
    LogLine("Listening on port %u", ntohs(servAdr.sin_port));
    return hServSock;
}

/* "127.0.0.1:54321", for the log. */
static void FormatAddress(const SOCKADDR_IN *adr, char *text, size_t textSize)
{
    char host[INET_ADDRSTRLEN] = "?";
    getnameinfo((const SOCKADDR *)adr, sizeof(*adr), host, sizeof(host), NULL, 0, NI_NUMERICHOST);
    snprintf(text, textSize, "%s:%u", host, ntohs(adr->sin_port));
}

/* Sends what waits in the session's buffer. send() takes only what fits in the socket's send
 * buffer now; the rest stays, and select() says when the socket can take more. */
static BOOL SendPending(SESSION *session)
{
    while (session->sendPos < session->sendLen) {
        int sent = send(session->hClntSock, session->buf + session->sendPos,
                        session->sendLen - session->sendPos, 0);
        if (sent == SOCKET_ERROR) {
            int err = WSAGetLastError();
            if (err == WSAEWOULDBLOCK)
                return TRUE; /* the send buffer is full: wait until select() says writable */
            ReportError("send()", err);
            return FALSE;
        }
        session->sendPos += sent;
        Trace(TRACE_SENT, session->hClntSock, (unsigned long)sent);
    }
    return TRUE;
}

/* The socket is readable: receive and echo. Returns FALSE when the session must be closed. */
static BOOL OnReadable(SESSION *session)
{
    int strLen = recv(session->hClntSock, session->buf, BUF_SIZE, 0);
    if (strLen == 0)
        return FALSE; /* the client closed (or half-closed); we read only when all was echoed */
    if (strLen == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err == WSAEWOULDBLOCK)
            return TRUE; /* nothing after all */
        ReportError("recv()", err); /* e.g. 10054: the client reset */
        return FALSE;
    }
    Trace(TRACE_RECV, session->hClntSock, (unsigned long)strLen);
    session->sendPos = 0;
    session->sendLen = strLen;
    return SendPending(session);
}

static void CloseSession(SESSION *session)
{
    Trace(TRACE_CLOSED, session->hClntSock, 0);
    closesocket(session->hClntSock);
    LogLine("Closed client %s", session->peer);
    free(session);
}

/* Accepts one waiting client into sessions[], or closes it at once when the server is full. After
 * an accept() failure that would repeat, sets *pausedUntil: the loop stops accepting till then. */
static void AcceptClient(SOCKET hServSock, SESSION *sessions[], int *numSessions,
                         ULONGLONG *pausedUntil)
{
    SOCKET hClntSock;
    SOCKADDR_IN clntAdr;
    int adrSz = sizeof(clntAdr);
    SESSION *session;

    hClntSock = accept(hServSock, (SOCKADDR *)&clntAdr, &adrSz);
    if (hClntSock == INVALID_SOCKET) {
        int err = WSAGetLastError();
        if (err == WSAEWOULDBLOCK)
            return; /* nobody waits after all */
        ReportError("accept()", err);
        /* A connection reset in the backlog (10054; 10057 under Wine) concerns that one: go on.
           Anything else (out of sockets or memory) would fail again at once: pause accepting
           for a while, not the loop (Sleep here would hold up every client too). */
        if (err != WSAECONNRESET && err != WSAENOTCONN)
            *pausedUntil = GetTickCount64() + ACCEPT_BACKOFF_MS;
        return;
    }
    if (*numSessions == MAX_CLIENTS) {
        char peer[64];
        FormatAddress(&clntAdr, peer, sizeof(peer));
        LogLine("Too many clients (%d): closed %s", MAX_CLIENTS, peer);
        closesocket(hClntSock);
        return;
    }
    session = calloc(1, sizeof(*session));
    if (session == NULL) {
        ReportError("calloc()", ERROR_NOT_ENOUGH_MEMORY);
        closesocket(hClntSock);
        return;
    }
    session->hClntSock = hClntSock;
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    sessions[(*numSessions)++] = session;
    Trace(TRACE_ACCEPTED, session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
}

/* The select() loop: one thread, every client. Never returns. */
NO_RETURN static void ServeClients(SOCKET hServSock)
{
    SESSION *sessions[MAX_CLIENTS];
    int numSessions = 0, i;
    fd_set reads, writes;
    ULONGLONG acceptPausedUntil = 0;

    for (;;) {
        BOOL accepting = GetTickCount64() >= acceptPausedUntil;
        struct timeval pause = {0, ACCEPT_BACKOFF_MS * 1000}; /* while not accepting */
        FD_ZERO(&reads);
        FD_ZERO(&writes);
        if (accepting)
            FD_SET(hServSock, &reads);
        for (i = 0; i < numSessions; i++) {
            /* Read only when everything received so far is echoed: that bounds the memory. */
            if (sessions[i]->sendPos < sessions[i]->sendLen)
                FD_SET(sessions[i]->hClntSock, &writes);
            else
                FD_SET(sessions[i]->hClntSock, &reads);
        }
        if (reads.fd_count + writes.fd_count == 0) { /* select() takes no empty sets */
            Sleep(ACCEPT_BACKOFF_MS);
            continue;
        }
        if (select(0, &reads, &writes, NULL, accepting ? NULL : &pause) == SOCKET_ERROR)
            ErrorHandling("select()"); /* only a bug in the sets makes it fail */

        /* Backwards, so that moving the last session into a closed one's slot skips nobody. */
        for (i = numSessions - 1; i >= 0; i--) {
            SESSION *session = sessions[i];
            BOOL open = TRUE;
            if (FD_ISSET(session->hClntSock, &reads))
                open = OnReadable(session);
            else if (FD_ISSET(session->hClntSock, &writes))
                open = SendPending(session);
            if (!open) {
                CloseSession(session);
                sessions[i] = sessions[--numSessions];
            }
        }
        if (accepting && FD_ISSET(hServSock, &reads))
            AcceptClient(hServSock, sessions, &numSessions, &acceptPausedUntil);
    }
}

int main(int argc, char *argv[])
{
    WSADATA wsaData;
    SOCKET hServSock;
    unsigned short port = ParsePort(argc, argv);
    int err;

    err = WSAStartup(MAKEWORD(2, 2), &wsaData);
    if (err != 0)
        ErrorHandlingCode("WSAStartup()", (DWORD)err);
    /* NULL, FALSE first: a process started with `start /b`, or in a new process group, inherits
       "ignore Ctrl+C", and no handler would see it (SetConsoleCtrlHandler's page). */
    if (!SetConsoleCtrlHandler(NULL, FALSE) || !SetConsoleCtrlHandler(CtrlHandler, TRUE))
        ErrorHandlingCode("SetConsoleCtrlHandler()", GetLastError());
    QuickEditOff(); /* a selection in the console would stop the server's next log line */

    hServSock = OpenListenSocket(port);
    ServeClients(hServSock); /* never returns: Ctrl+C ends the process (Windows closes its sockets) */
}
