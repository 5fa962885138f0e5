/*
 * 04_completion_routine/EchoServ_win.c - an overlapped echo server, completions run as routines.
 *
 * Stage 4 of 7: overlapped I/O, completions run as completion routines (APCs).
 *
 * What this stage teaches:
 * The same overlapped WSARecv/WSASend as stage 3, but each post names a completion routine instead
 * of an event.
 * When the I/O is over, the system queues the routine (an APC) to the thread that POSTED the I/O,
 * and runs it when that thread waits alertably (SleepEx(..., TRUE)).
 *
 * Changed from the previous stage:
 * No event per client, so no 64-handle limit.
 * Accepting and I/O get a thread each, the split the notes point to at the end: the main thread
 * blocks in accept() and hands each new socket to the I/O thread (QueueUserAPC); the I/O thread
 * sleeps alertably forever and is the only thread that posts I/O, so every completion routine runs
 * there, one at a time.
 *
 * What the book / notes do, and what we do instead:
 * The book's CmplRouEchoServ_win.c, as the notes describe it, alternates ReadCompRoutine (a receive
 * is over: send it back) and WriteCompRoutine (the send is over: receive again), and passes the
 * client's PER_IO_DATA to them through the OVERLAPPED's hEvent, which routines leave unused: kept.
 * Its main loop is not: the listing polls a non-blocking accept() between SleepEx(100, TRUE) calls,
 * so each new client waits up to 100 ms, and under load back-to-back routines keep it from accept()
 * for seconds.
 * The listing also never reads dwError or what WSARecv/WSASend return, loses the rest of a short
 * send, reuses the OVERLAPPED unzeroed and never sets bufInfo->len back: handled below.
 *
 * Handled here:
 *   - a 0-byte read (the client closed) or an error (a reset) ends that client only.
 *   - a failed accept concerns one connection (e.g. it was reset while waiting): log, go on.
 *   - payloads are bytes, never strings: no str* function touches them.
 *   - a short WSASend is completed by posting the rest.
 *   - the OVERLAPPED and the lpFlags argument are reset before every post.
 *   - a post that fails at once closes the client: no completion will ever come for it.
 *   - one I/O per client at a time, so a client that never reads stops at its TCP window and cannot
 *     grow the server's memory.
 *   - a session is freed only once its I/O has completed, never while the system may still write
 *     into its OVERLAPPED and buffer.
 *   - the limit: MAX_CLIENTS = 1,000 clients at once; one more is accepted and closed at once.
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
#define MAX_CLIENTS 1000 /* no 64-handle wait any more: about 8 KB of memory a client */

/* The one I/O a client has outstanding: a WSARecv into buf, or a WSASend of buf[sendPos..sendLen).
 * While it is pending the system owns overlapped, buf and recvFlags: none may move or be freed. */
typedef struct {
    WSAOVERLAPPED overlapped; /* hEvent: unused by completion routines; carries this PER_IO_DATA */
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
    volatile LONG *numSessions; /* the server's count: a routine has no other way to reach it */
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

    /* WSA_FLAG_OVERLAPPED: the sockets accept() returns inherit it and take overlapped I/O.
       (socket() sets it as well; WSASocket says so explicitly.) */
    hServSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("WSASocketW()");
    /* Left blocking, unlike the notes' loop: the main thread does nothing but wait in accept(). */

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

static void CALLBACK ReadCompRoutine(DWORD dwError, DWORD cbTransferred,
                                     LPWSAOVERLAPPED lpOverlapped, DWORD dwFlags);
static void CALLBACK WriteCompRoutine(DWORD dwError, DWORD cbTransferred,
                                      LPWSAOVERLAPPED lpOverlapped, DWORD dwFlags);

/* Before every post: a zeroed OVERLAPPED (the system keeps its state there while the I/O is
 * pending). A completion routine gets no event, so hEvent is free: it carries the PER_IO_DATA. */
static void ResetOverlapped(PER_IO_DATA *ioData)
{
    memset(&ioData->overlapped, 0, sizeof(ioData->overlapped));
    ioData->overlapped.hEvent = (WSAEVENT)ioData;
}

/* Posts a receive into the whole buffer. Done at once or pending, ReadCompRoutine runs when this
 * thread next waits alertably; only a failure at once (no routine will run) returns FALSE. */
static BOOL PostRecv(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;

    ResetOverlapped(ioData);
    ioData->recvFlags = 0; /* in/out: WSARecv may have written to it last time */
    ioData->wsaBuf.buf = ioData->buf;
    ioData->wsaBuf.len = BUF_SIZE;
    if (WSARecv(session->hClntSock, &ioData->wsaBuf, 1, NULL, &ioData->recvFlags,
                &ioData->overlapped, ReadCompRoutine) == SOCKET_ERROR) {
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

    ResetOverlapped(ioData);
    ioData->wsaBuf.buf = ioData->buf + ioData->sendPos;
    ioData->wsaBuf.len = ioData->sendLen - ioData->sendPos;
    if (WSASend(session->hClntSock, &ioData->wsaBuf, 1, NULL, 0,
                &ioData->overlapped, WriteCompRoutine) == SOCKET_ERROR) {
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

/* Called only when no I/O is pending, so nothing writes into the session after free(). */
static void CloseSession(SESSION *session)
{
    Trace(TRACE_CLOSED, session->hClntSock, 0);
    closesocket(session->hClntSock);
    InterlockedDecrement(session->numSessions); /* before the log line: the slot is free now */
    LogLine("Closed client %s", session->peer);
    free(session);
}

/* A receive is over. Runs on the I/O thread, inside its alertable SleepEx. hEvent brings the
 * PER_IO_DATA (lpOverlapped points into it too); the SESSION is the struct around it. */
static void CALLBACK ReadCompRoutine(DWORD dwError, DWORD cbTransferred,
                                     LPWSAOVERLAPPED lpOverlapped, DWORD dwFlags)
{
    PER_IO_DATA *ioData = (PER_IO_DATA *)lpOverlapped->hEvent;
    SESSION *session = CONTAINING_RECORD(ioData, SESSION, ioData);

    (void)dwFlags;
    if (dwError != 0)
        ReportError("WSARecv()", dwError); /* e.g. 10054: the client reset */
    else if (OnRecvCompleted(session, cbTransferred))
        return;
    CloseSession(session); /* the I/O is over and nothing else is pending */
}

/* A send is over: the same, for WSASend. */
static void CALLBACK WriteCompRoutine(DWORD dwError, DWORD cbTransferred,
                                      LPWSAOVERLAPPED lpOverlapped, DWORD dwFlags)
{
    PER_IO_DATA *ioData = (PER_IO_DATA *)lpOverlapped->hEvent;
    SESSION *session = CONTAINING_RECORD(ioData, SESSION, ioData);

    (void)dwFlags;
    if (dwError != 0)
        ReportError("WSASend()", dwError);
    else if (OnSendCompleted(session, cbTransferred))
        return;
    CloseSession(session);
}

/* An APC that AcceptClient queues to the I/O thread: posts the client's first receive there, so
 * that this client's completion routines all run on the I/O thread. */
static void CALLBACK StartSession(ULONG_PTR param)
{
    SESSION *session = (SESSION *)param;

    if (!PostRecv(session))
        CloseSession(session);
}

/* Waits in accept() for one client and hands it to the I/O thread, or closes it at once when the
 * server is full. */
static void AcceptClient(SOCKET hServSock, HANDLE hIoThread, volatile LONG *numSessions)
{
    SOCKET hClntSock;
    SOCKADDR_IN clntAdr;
    int adrSz = sizeof(clntAdr);
    SESSION *session;

    hClntSock = accept(hServSock, (SOCKADDR *)&clntAdr, &adrSz);
    if (hClntSock == INVALID_SOCKET) {
        int err = WSAGetLastError();
        ReportError("accept()", err);
        /* A connection reset in the backlog (10054; 10057 under Wine) concerns that one: go on.
           Anything else (out of sockets or memory) would fail again at once: wait, not spin. */
        if (err != WSAECONNRESET && err != WSAENOTCONN)
            Sleep(ACCEPT_BACKOFF_MS);
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
    session->numSessions = numSessions;
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    InterlockedIncrement(numSessions); /* only this thread raises it: the check above holds */
    Trace(TRACE_ACCEPTED, session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
    /* Completion routines run only on the thread that posted the I/O, so the I/O thread must post
       it: queue StartSession to it, to run in its alertable sleep. */
    if (!QueueUserAPC(StartSession, hIoThread, (ULONG_PTR)session)) {
        ReportError("QueueUserAPC()", GetLastError());
        CloseSession(session); /* it never reached the I/O thread: no I/O is pending */
    }
}

/* The I/O thread: sleeps alertably, forever. Each wake-up runs what was queued to it: new clients
 * (StartSession) and the completion routines of the I/O it posted, one after the other. */
static DWORD WINAPI IoThreadMain(LPVOID param)
{
    TraceThread("I/O");
    (void)param;
    while (SleepEx(INFINITE, TRUE) == WAIT_IO_COMPLETION) {
        /* it returns only after running the queued APCs: sleep again */
    }
    return 0; /* not reached */
}

/* The main thread accepts; the I/O thread does every client's I/O. Never returns. */
NO_RETURN static void ServeClients(SOCKET hServSock)
{
    volatile LONG numSessions = 0; /* raised by AcceptClient, lowered by CloseSession */
    HANDLE hIoThread = CreateThread(NULL, 0, IoThreadMain, NULL, 0, NULL);

    if (hIoThread == NULL)
        ErrorHandlingCode("CreateThread()", GetLastError());
    for (;;)
        AcceptClient(hServSock, hIoThread, &numSessions);
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
