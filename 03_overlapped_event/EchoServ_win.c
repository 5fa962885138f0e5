/*
 * 03_overlapped_event/EchoServ_win.c - an overlapped echo server, completions signalled by events.
 *
 * Stage 3 of 7: overlapped I/O, completions signalled by events.
 *
 * What this stage teaches:
 * Overlapped I/O turns select() around: instead of asking "can I read now?", the server posts a
 * WSARecv or WSASend with a WSAOVERLAPPED and the call returns at once.
 * The system does the I/O in the background and, when it is over, sets the event in the
 * OVERLAPPED's hEvent.
 * WSAGetOverlappedResult then tells how a finished I/O went: how many bytes, or which error.
 *
 * Changed from the previous stage:
 * Each client has its own event, the listening socket has one too (WSAEventSelect FD_ACCEPT), and
 * one thread waits on all of them with WSAWaitForMultipleEvents instead of select().
 *
 * What the book / notes do, and what we do instead:
 * The notes have no listing for this model (they go from select() to completion routines); the
 * tutorials that start overlapped I/O here share the bugs handled below.
 *
 * Handled here:
 *   - a 0-byte read (the client closed) or an error (a reset) ends that client only.
 *   - a failed accept concerns one connection (e.g. it was reset while waiting): log, go on.
 *   - payloads are bytes, never strings: no str* function touches them.
 *   - a short WSASend is completed by posting the rest.
 *   - the OVERLAPPED, the lpFlags argument and the event are reset before every post.
 *   - a post that fails at once closes the client: no completion will ever come for it.
 *   - one I/O per client at a time, so a client that never reads stops at its TCP window and cannot
 *     grow the server's memory.
 *   - a session is freed only once its I/O has completed, never while the system may still write
 *     into its OVERLAPPED and buffer.
 *   - WSAWaitForMultipleEvents reports only the LOWEST signalled index: every signalled event is
 *     serviced on each wake-up, or a busy client at a low index starves every client after it.
 *   - the limit: one wait takes at most WSA_MAXIMUM_WAIT_EVENTS = 64 events; the listening socket's
 *     takes one, so this server serves 63 clients; one more is accepted and closed at once.
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -o EchoServ_win.exe EchoServ_win.c -lws2_32
 * Run:   EchoServ_win.exe <port>      (0 picks a free port)
 */
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
#define MAX_CLIENTS (WSA_MAXIMUM_WAIT_EVENTS - 1) /* the listening socket's event takes one slot */

/* The one I/O a client has outstanding: a WSARecv into buf, or a WSASend of buf[sendPos..sendLen).
 * While it is pending the system owns overlapped, buf and recvFlags: none may move or be freed. */
typedef struct {
    WSAOVERLAPPED overlapped; /* hEvent: the client's own event, set when the I/O is over */
    WSABUF wsaBuf;
    char buf[BUF_SIZE];
    DWORD recvFlags;          /* WSARecv's in/out lpFlags: kept beside the OVERLAPPED, not on a stack */
    DWORD sendPos, sendLen;   /* sendPos < sendLen: a WSASend is outstanding; else a WSARecv */
} PER_IO_DATA;

/* One connected client. */
typedef struct {
    SOCKET hClntSock;
    char peer[64];
    PER_IO_DATA ioData;
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

    /* WSA_FLAG_OVERLAPPED: the sockets accept() returns inherit it and take overlapped I/O.
       (socket() sets it as well; WSASocket says so explicitly.) */
    hServSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("WSASocketW()");
    /* Non-blocking: after an accept pause the loop tries accept() even with FD_ACCEPT unset (Wine
       does not set it again), and it must not block the only thread when nobody waits.
       (WSAEventSelect in ServeClients would set this mode as well.) */
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

/* Before every post: a zeroed OVERLAPPED (the system keeps its state there while the I/O is
 * pending) that keeps the client's event, reset so that only this I/O can set it again. */
static BOOL ResetOverlapped(PER_IO_DATA *ioData)
{
    WSAEVENT hEvent = ioData->overlapped.hEvent;

    if (!WSAResetEvent(hEvent)) {
        ReportError("WSAResetEvent()", WSAGetLastError());
        return FALSE;
    }
    memset(&ioData->overlapped, 0, sizeof(ioData->overlapped));
    ioData->overlapped.hEvent = hEvent;
    return TRUE;
}

/* Posts a receive into the whole buffer. Done at once or pending, the event is set when it is
 * over; only a failure at once (no completion will come) returns FALSE. */
static BOOL PostRecv(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;

    if (!ResetOverlapped(ioData))
        return FALSE;
    ioData->recvFlags = 0; /* in/out: WSARecv may have written to it last time */
    ioData->wsaBuf.buf = ioData->buf;
    ioData->wsaBuf.len = BUF_SIZE;
    if (WSARecv(session->hClntSock, &ioData->wsaBuf, 1, NULL, &ioData->recvFlags,
                &ioData->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            ReportError("WSARecv()", err); /* e.g. 10054: the client reset */
            return FALSE;
        }
    }
    return TRUE;
}

/* Posts a send of what is not echoed yet, buf[sendPos..sendLen). Same rules as PostRecv. */
static BOOL PostSend(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;

    if (!ResetOverlapped(ioData))
        return FALSE;
    ioData->wsaBuf.buf = ioData->buf + ioData->sendPos;
    ioData->wsaBuf.len = ioData->sendLen - ioData->sendPos;
    if (WSASend(session->hClntSock, &ioData->wsaBuf, 1, NULL, 0,
                &ioData->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            ReportError("WSASend()", err);
            return FALSE;
        }
    }
    return TRUE;
}

/* A receive is over: echo what came, or close on 0 bytes (the client closed or half-closed; we
 * receive only when everything before was echoed, so nothing is left to send). */
static BOOL OnRecvCompleted(SESSION *session, DWORD bytes)
{
    Trace(TRACE_RECV, session->hClntSock, bytes);
    if (bytes == 0)
        return FALSE;
    session->ioData.sendPos = 0;
    session->ioData.sendLen = bytes;
    return PostSend(session);
}

/* A send is over: a short send posts the rest; only when all is echoed, receive again. */
static BOOL OnSendCompleted(SESSION *session, DWORD bytes)
{
    Trace(TRACE_SENT, session->hClntSock, bytes);
    session->ioData.sendPos += bytes;
    if (session->ioData.sendPos < session->ioData.sendLen)
        return PostSend(session);
    return PostRecv(session);
}

/* The session's event is set: its I/O is over. Returns FALSE when the session must be closed. */
static BOOL OnIoCompleted(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;
    BOOL sending = ioData->sendPos < ioData->sendLen;
    DWORD bytes = 0, flags = 0;

    if (!WSAGetOverlappedResult(session->hClntSock, &ioData->overlapped, &bytes, FALSE, &flags)) {
        ReportError(sending ? "WSASend()" : "WSARecv()", WSAGetLastError());
        return FALSE;
    }
    return sending ? OnSendCompleted(session, bytes) : OnRecvCompleted(session, bytes);
}

/* Called only when no I/O is pending, so nothing writes into the session after free(). */
static void CloseSession(SESSION *session)
{
    Trace(TRACE_CLOSED, session->hClntSock, 0);
    closesocket(session->hClntSock);
    WSACloseEvent(session->ioData.overlapped.hEvent);
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
    /* The accepted socket inherits the listener's WSAEventSelect: FD_ACCEPT on the listener's
       event (docs: accept). This client is driven by overlapped I/O and its own event only, so
       cancel that selection before the first post. (The non-blocking mode it inherits too does
       not matter: an overlapped call always returns at once.) */
    if (WSAEventSelect(hClntSock, NULL, 0) == SOCKET_ERROR) {
        ReportError("WSAEventSelect()", WSAGetLastError());
        closesocket(hClntSock);
        return;
    }
    session = calloc(1, sizeof(*session));
    if (session == NULL) {
        ReportError("calloc()", ERROR_NOT_ENOUGH_MEMORY);
        closesocket(hClntSock);
        return;
    }
    session->ioData.overlapped.hEvent = WSACreateEvent(); /* manual-reset, not signalled */
    if (session->ioData.overlapped.hEvent == WSA_INVALID_EVENT) {
        ReportError("WSACreateEvent()", WSAGetLastError());
        free(session);
        closesocket(hClntSock);
        return;
    }
    session->hClntSock = hClntSock;
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    Trace(TRACE_ACCEPTED, session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
    if (!PostRecv(session)) {
        CloseSession(session);
        return;
    }
    sessions[(*numSessions)++] = session;
}

/* A zero-timeout wait: is this event set now? */
static BOOL IsSignalled(WSAEVENT hEvent)
{
    DWORD result = WSAWaitForMultipleEvents(1, &hEvent, FALSE, 0, FALSE);
    if (result == WSA_WAIT_FAILED)
        ErrorHandling("WSAWaitForMultipleEvents()"); /* only a bad handle, a bug, makes it fail */
    return result == WSA_WAIT_EVENT_0;
}

/* The event loop: one thread, every client. Never returns. */
NO_RETURN static void ServeClients(SOCKET hServSock)
{
    SESSION *sessions[MAX_CLIENTS];
    int numSessions = 0, i;
    WSAEVENT events[WSA_MAXIMUM_WAIT_EVENTS];
    WSAEVENT hServEvent = WSACreateEvent();
    ULONGLONG acceptPausedUntil = 0;

    if (hServEvent == WSA_INVALID_EVENT)
        ErrorHandling("WSACreateEvent()");
    if (WSAEventSelect(hServSock, hServEvent, FD_ACCEPT) == SOCKET_ERROR)
        ErrorHandling("WSAEventSelect()");

    for (;;) {
        ULONGLONG now = GetTickCount64();
        BOOL paused = acceptPausedUntil != 0;
        int first = paused ? 1 : 0; /* paused: leave the listening socket's event out */
        DWORD timeout = !paused ? WSA_INFINITE
                        : now >= acceptPausedUntil ? 0 : (DWORD)(acceptPausedUntil - now);
        events[0] = hServEvent;
        for (i = 0; i < numSessions; i++)
            events[i + 1] = sessions[i]->ioData.overlapped.hEvent;
        if (numSessions + 1 - first == 0) /* no event to wait for */
            Sleep(timeout);
        else if (WSAWaitForMultipleEvents((DWORD)(numSessions + 1 - first), events + first, FALSE,
                                          timeout, FALSE) == WSA_WAIT_FAILED)
            ErrorHandling("WSAWaitForMultipleEvents()"); /* only a bug in the array makes it fail */

        /* The wait names only the lowest signalled index: look at every event, not just that one.
           Backwards, so that moving the last session into a closed one's slot skips nobody. */
        for (i = numSessions - 1; i >= 0; i--) {
            SESSION *session = sessions[i];
            BOOL open = TRUE;
            if (IsSignalled(session->ioData.overlapped.hEvent))
                open = OnIoCompleted(session);
            if (!open) {
                CloseSession(session);
                sessions[i] = sessions[--numSessions];
            }
        }
        /* When a pause ends, accept() is tried even with the event unset, and whether or not
           a client did anything meanwhile: Wine 8 does not set it again after a failed accept()
           while clients still wait (measured: the suite's accept_shortage). */
        if (paused ? GetTickCount64() >= acceptPausedUntil : IsSignalled(hServEvent)) {
            WSANETWORKEVENTS netEvents;
            /* Resets the event; accept() re-arms FD_ACCEPT, so it is set again while more wait. */
            if (WSAEnumNetworkEvents(hServSock, hServEvent, &netEvents) == SOCKET_ERROR)
                ErrorHandling("WSAEnumNetworkEvents()");
            acceptPausedUntil = 0;
            AcceptClient(hServSock, sessions, &numSessions, &acceptPausedUntil);
        }
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
