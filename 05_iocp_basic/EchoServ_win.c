/*
 * 05_iocp_basic/EchoServ_win.c - an overlapped echo server, completions queued to a completion port.
 *
 * Stage 5 of 7: overlapped I/O, completions queued to an I/O completion port (IOCP).
 *
 * What this stage teaches:
 * The same overlapped WSARecv/WSASend as stages 3 and 4, but their completions go to a completion
 * port: each client socket is associated with the port once (CreateIoCompletionPort), and when an
 * I/O on it is over, the system queues a completion packet there.
 * Worker threads, one per processor, wait on the port (GetQueuedCompletionStatus) and each handles
 * whatever completed, for any client.
 *
 * Changed from the previous stage:
 * No thread owns a client any more, as 04's I/O thread did: the work spreads over every processor;
 * the main thread waits for a client or Ctrl+C, on two events (WSAEventSelect FD_ACCEPT, as in
 * 03, and the stop event the Ctrl+C handler sets).
 * Ctrl+C stops gracefully: stop accepting, cancel every session's I/O, wait until none is
 * outstanding, one sentinel per worker, join, free, then the "Shutdown:" line.
 *
 * What the book / notes do, and what we do instead:
 * The book's IOCPEchoServ_win.c (ch. 23; the notes summarise the chapter, not the listing) has this
 * shape; its mistakes are not kept.
 * It passes the per-handle data as a DWORD completion key, cut in half on x64 (a ULONG_PTR here);
 * the notes copy that cast: (DWORD)ioInfo.
 * It ignores GetQueuedCompletionStatus's failures, frees a client on EOF while a send may still be
 * pending, never completes a short send, and cannot stop.
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
 *   - all four outcomes of GetQueuedCompletionStatus are told apart: a completed I/O; a failed I/O
 *     (FALSE with an OVERLAPPED: close that client); a failed wait (FALSE without one: the key
 *     means nothing); the stop's sentinel. No client's failure ever ends a worker.
 *   - each session counts its outstanding I/O: raised BEFORE each post (another worker may run the
 *     completion before WSARecv returns), lowered at each completion, and where a post fails at
 *     once. Whoever takes it to 0 closes and frees the session, once.
 *   - the per-I/O data embeds the OVERLAPPED and comes back with CONTAINING_RECORD.
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
#define MAX_WORKERS MAXIMUM_WAIT_OBJECTS /* 64: the stop joins them all with one wait */
#define STOP_REPORT_MS 1000 /* the stop names the sessions it still waits for, once a second */

/* The one I/O a client has outstanding: a WSARecv into buf, or a WSASend of buf[sendPos..sendLen).
 * While it is pending the system owns overlapped, buf and recvFlags: none may move or be freed. */
typedef struct {
    WSAOVERLAPPED overlapped; /* the port gives its address back: CONTAINING_RECORD finds the rest */
    WSABUF wsaBuf;
    char buf[BUF_SIZE];
    DWORD recvFlags;          /* WSARecv's in/out lpFlags: kept beside the OVERLAPPED, not on a stack */
    DWORD sendPos, sendLen;   /* sendPos < sendLen: a WSASend is outstanding; else a WSARecv */
} PER_IO_DATA;

/* A call that failed while a lock was held: reported once the lock is released. */
typedef struct {
    const char *call;            /* NULL: nothing failed */
    int error;
} FAILURE;

/* One connected client: the per-handle data, the completion key of its socket. */
typedef struct SESSION {
    SOCKET hClntSock;
    char peer[64];
    PER_IO_DATA ioData;
    struct SERVER *server;       /* what every thread shares: a worker has only the key */
    volatile LONG ioCount;       /* posted, not yet completed I/O: whoever takes it to 0 closes */
    struct SESSION *prev, *next; /* in the server's list of sessions, for the stop */
} SESSION;

/* What the workers and the main thread share. */
typedef struct SERVER {
    HANDLE hComPort;
    HANDLE hWorkers[MAX_WORKERS];
    DWORD numWorkers;
    CRITICAL_SECTION lock;      /* guards sessions, numSessions and hNoSessions */
    SESSION *sessions;          /* every session not yet closed */
    volatile LONG numSessions;
    HANDLE hNoSessions;         /* manual-reset event, set while numSessions is 0 */
    volatile LONG64 numAccepted, numClosed; /* 64-bit: a LONG wraps after 2^31 connections */
    volatile LONG64 bytesEchoed;
} SERVER;

/* The Ctrl+C handler runs on a thread of its own and takes no parameter: what it needs is global.
 * g_state also says whether the main thread waits for the stop event: only once it is SERVING. */
enum { STARTING, SERVING, STOPPING };
static volatile LONG g_state = STARTING;
static HANDLE g_hStopEvent;

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

/* Ctrl+C / Ctrl+Break, on a thread the system creates for it. It only starts the stop: it sets
 * the event the main thread waits for, and returns TRUE, so the process lives on while the main
 * thread stops the server (StopServer). A second Ctrl+C ends the process at once. */
static BOOL WINAPI CtrlHandler(DWORD ctrlType)
{
    LONG before;

    /* Closing the console window, End task: the default handler's ExitProcess can hang while a
       thread is blocked writing stdout (common/ErrorHandling.h); the system ends the process a
       few seconds later anyway. As the second Ctrl+C: at once.
       (learn.microsoft.com/windows/console/ctrl-close-signal) */
    if (ctrlType == CTRL_CLOSE_EVENT)
        EndProcessNow();
    if (ctrlType != CTRL_C_EVENT && ctrlType != CTRL_BREAK_EVENT)
        return FALSE;
    EndAtSecondCtrlC(); /* the stop is blocked or slow, and the user means it: now */
    before = InterlockedExchange(&g_state, STOPPING);
    if (before == SERVING)
        SetEvent(g_hStopEvent);
    return TRUE;
}

/* socket, bind, listen (port 0 picks one). ServeClients prints "Listening on port N" once the
 * server accepts. */
static SOCKET OpenListenSocket(unsigned short port)
{
    SOCKET hServSock;
    SOCKADDR_IN servAdr;
    BOOL exclusive = TRUE;

    /* WSA_FLAG_OVERLAPPED: the sockets accept() returns inherit it and take overlapped I/O.
       (socket() sets it as well; WSASocket says so explicitly.) */
    hServSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("WSASocketW()");
    /* ServeClients' WSAEventSelect makes it non-blocking: the main thread waits on events instead. */

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
 * pending). The port hands back its address, so it needs no event and no hEvent trick. */
static void ResetOverlapped(PER_IO_DATA *ioData)
{
    memset(&ioData->overlapped, 0, sizeof(ioData->overlapped));
}

/* Posts a receive into the whole buffer. Done at once or pending, its completion is queued to the
 * port, for any worker; only a failure at once (no completion will come) returns FALSE. */
static BOOL PostRecv(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;

    ResetOverlapped(ioData);
    ioData->recvFlags = 0; /* in/out: WSARecv may have written to it last time */
    ioData->wsaBuf.buf = ioData->buf;
    ioData->wsaBuf.len = BUF_SIZE;
    /* Counted BEFORE the call, every field above set: a worker may run the completion before
       WSARecv even returns here. */
    InterlockedIncrement(&session->ioCount);
    if (WSARecv(session->hClntSock, &ioData->wsaBuf, 1, NULL, &ioData->recvFlags,
                &ioData->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            if (err != WSAESHUTDOWN) /* 10058: the stop has shut it down; not worth a line */
                ReportError("WSARecv()", err); /* e.g. 10054: the client reset */
            InterlockedDecrement(&session->ioCount); /* here, and only here: nothing completes */
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
    InterlockedIncrement(&session->ioCount);
    if (WSASend(session->hClntSock, &ioData->wsaBuf, 1, NULL, 0,
                &ioData->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            if (err != WSAESHUTDOWN) /* 10058: the stop has shut it down; not worth a line */
                ReportError("WSASend()", err); /* under Wine, 10054 at once on a reset client */
            InterlockedDecrement(&session->ioCount);
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
    InterlockedExchangeAdd64(&session->server->bytesEchoed, bytes);
    session->ioData.sendPos += bytes;
    if (session->ioData.sendPos < session->ioData.sendLen)
        return PostSend(session);
    return PostRecv(session);
}

/* Called only when no I/O is pending, so nothing writes into the session after free(). */
static void CloseSession(SESSION *session)
{
    SERVER *server = session->server;

    EnterCriticalSection(&server->lock); /* off the list first: the stop no longer reaches it */
    if (session->prev != NULL)
        session->prev->next = session->next;
    else
        server->sessions = session->next;
    if (session->next != NULL)
        session->next->prev = session->prev;
    if (--server->numSessions == 0) /* the slot is free now */
        SetEvent(server->hNoSessions); /* only a wake-up: the stop reads numSessions itself */
    LeaveCriticalSection(&server->lock);

    Trace(TRACE_CLOSED, session->hClntSock, 0);
    closesocket(session->hClntSock);
    InterlockedIncrement64(&server->numClosed);
    LogLine("Closed client %s", session->peer);
    free(session);
}

/* Lowers the I/O count at a completion. Whoever takes it to 0 saw the last one: closes. */
static void ReleaseSession(SESSION *session)
{
    if (InterlockedDecrement(&session->ioCount) == 0)
        CloseSession(session);
}

/* A failed I/O that needs no line: 995 (ERROR_OPERATION_ABORTED) is our own CancelIoEx; and once
 * we are cancelling (the session is closing, or the server stopping), 64 (ERROR_NETNAME_DELETED)
 * and 1236 (ERROR_CONNECTION_ABORTED) are too: a cancelled I/O may also complete with another
 * error than 995 (CancelIoEx's page). Wine gave 995 only; Windows was not measured. */
static BOOL IsExpectedFailure(DWORD err, BOOL cancelling)
{
    if (err == ERROR_OPERATION_ABORTED)
        return TRUE;
    return cancelling && (err == ERROR_NETNAME_DELETED || err == ERROR_CONNECTION_ABORTED);
}

/* A worker: takes completions off the port, for any client, until the stop's sentinel. The key
 * brings the SESSION; the OVERLAPPED points into its PER_IO_DATA. */
static DWORD WINAPI WorkerThreadMain(LPVOID param)
{
    HANDLE hComPort = (HANDLE)param;

    TraceThread("worker");
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED overlapped = NULL;
        BOOL ok = GetQueuedCompletionStatus(hComPort, &bytes, &key, &overlapped, INFINITE);
        SESSION *session;
        PER_IO_DATA *ioData;

        if (overlapped == NULL) {
            if (ok)
                return 0; /* the stop's sentinel: posted with no OVERLAPPED */
            /* The wait itself failed (the port is gone): no packet; key and bytes mean nothing. */
            ReportError("GetQueuedCompletionStatus()", GetLastError());
            return 1;
        }
        session = (SESSION *)key;
        ioData = CONTAINING_RECORD(overlapped, PER_IO_DATA, overlapped);
        if (!ok) {
            /* That I/O failed; key and OVERLAPPED are valid. A Win32 code: 64 (the client reset),
               1236 (aborted), 995 (cancelled by the stop): IsExpectedFailure. Post nothing. There
               is nothing else to cancel: a session has one I/O at a time, and this was it. (06
               and 07 have two, and need a closing flag so that the cancel of the other holds.) */
            DWORD err = GetLastError();
            if (!IsExpectedFailure(err, g_state == STOPPING))
                ReportError(ioData->sendPos < ioData->sendLen ? "WSASend()" : "WSARecv()", err);
        } else if (ioData->sendPos < ioData->sendLen) {
            OnSendCompleted(session, bytes);
        } else {
            OnRecvCompleted(session, bytes);
        }
        /* Lowered last, after the next I/O is posted: the count of a session still in use never
           touches 0 between two of its I/Os. When nothing was posted, this closes it. */
        ReleaseSession(session);
    }
}

/* Accepts one waiting client and hands it to the port, or closes it at once when the server is
 * full. After an accept() failure that would repeat, sets *paused: the caller pauses accepting. */
static void AcceptClient(SOCKET hServSock, SERVER *server, BOOL *paused)
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
           Anything else (out of sockets or memory) would fail again at once: wait, not spin. */
        if (err != WSAECONNRESET && err != WSAENOTCONN)
            *paused = TRUE;
        return;
    }
    server->numAccepted++; /* only this thread counts accepts (and reads them, after the join) */
    if (server->numSessions == MAX_CLIENTS) {
        char peer[64];
        FormatAddress(&clntAdr, peer, sizeof(peer));
        LogLine("Too many clients (%d): closed %s", MAX_CLIENTS, peer);
        closesocket(hClntSock);
        InterlockedIncrement64(&server->numClosed);
        return;
    }
    /* The accepted socket inherits the listener's WSAEventSelect (docs: accept). Its I/O goes to
       the port only: cancel that selection. (The non-blocking mode it inherits does not matter:
       an overlapped call always returns at once.) */
    if (WSAEventSelect(hClntSock, NULL, 0) == SOCKET_ERROR) {
        ReportError("WSAEventSelect()", WSAGetLastError());
        closesocket(hClntSock);
        InterlockedIncrement64(&server->numClosed);
        return;
    }
    session = calloc(1, sizeof(*session));
    if (session == NULL) {
        ReportError("calloc()", ERROR_NOT_ENOUGH_MEMORY);
        closesocket(hClntSock);
        InterlockedIncrement64(&server->numClosed);
        return;
    }
    session->hClntSock = hClntSock;
    session->server = server;
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    EnterCriticalSection(&server->lock); /* only this thread raises the count: the check holds */
    session->next = server->sessions;
    if (server->sessions != NULL)
        server->sessions->prev = session;
    server->sessions = session;
    if (server->numSessions++ == 0)
        ResetEvent(server->hNoSessions);
    LeaveCriticalSection(&server->lock);
    Trace(TRACE_ACCEPTED, session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
    /* From now on every completion of this socket is queued to the port, the session as its key
       (a ULONG_PTR: a pointer fits, on x64 too). Then the first receive. */
    if (CreateIoCompletionPort((HANDLE)hClntSock, server->hComPort, (ULONG_PTR)session, 0) == NULL) {
        ReportError("CreateIoCompletionPort()", GetLastError());
        CloseSession(session); /* no I/O is pending */
        return;
    }
    if (!PostRecv(session))
        CloseSession(session); /* no completion will come: the count is back at 0 */
}

/* The port and its workers. Concurrency 0: the port lets as many workers run at once as there
 * are processors. One worker per processor, the notes' rule: when one blocks (here only in
 * printf), the port may wake another; 2 x processors is the other usual rule. Only a measurement
 * settles it (see the README). */
static void StartServer(SERVER *server)
{
    SYSTEM_INFO sysInfo;
    DWORD i;

    memset(server, 0, sizeof(*server));
    InitializeCriticalSection(&server->lock);
    server->hNoSessions = CreateEvent(NULL, TRUE, TRUE, NULL);
    if (server->hNoSessions == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    server->hComPort = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (server->hComPort == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());

    GetSystemInfo(&sysInfo);
    server->numWorkers = sysInfo.dwNumberOfProcessors;
    if (server->numWorkers < 1)
        server->numWorkers = 1;
    if (server->numWorkers > MAX_WORKERS) /* clamp to the array, however many processors */
        server->numWorkers = MAX_WORKERS;
    for (i = 0; i < server->numWorkers; i++) {
        server->hWorkers[i] = CreateThread(NULL, 0, WorkerThreadMain, server->hComPort, 0, NULL);
        if (server->hWorkers[i] == NULL)
            ErrorHandlingCode("CreateThread()", GetLastError());
    }
}

/* Stop-path calls that failed under the server's lock: counted, the first one kept, reported
 * after the lock. */
typedef struct {
    FAILURE first;
    int count;
} STOP_FAILURES;

static void NoteStopFailure(STOP_FAILURES *failures, const char *call, int err)
{
    if (failures->count++ == 0) {
        failures->first.call = call;
        failures->first.error = err;
    }
}

/* Ends a session's I/O for the stop: shutdown first, so that any post made after this fails at
 * once (10058): the cancel holds even against a worker posting the next I/O right now; then
 * CancelIoEx for what is pending now (995). The caller holds the server's lock. Expected
 * failures: shutdown on a client that has just gone (WSAENOTCONN; WSAECONNRESET or
 * WSAECONNABORTED if it reset), the cancel with nothing pending (ERROR_NOT_FOUND); anything else
 * is noted. */
static void CancelForStop(SOCKET hSock, STOP_FAILURES *failures)
{
    if (shutdown(hSock, SD_BOTH) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSAENOTCONN && err != WSAECONNRESET && err != WSAECONNABORTED)
            NoteStopFailure(failures, "shutdown()", err);
    }
    if (!CancelIoEx((HANDLE)hSock, NULL) && GetLastError() != ERROR_NOT_FOUND)
        NoteStopFailure(failures, "CancelIoEx()", (int)GetLastError());
}

/* Waits until no session is left. hNoSessions is only the wake-up: the count, read under the
 * lock, decides (so a lost SetEvent cannot hang the stop). Every STOP_REPORT_MS without the end,
 * one line names the sessions still open and their outstanding I/O: a stop that hangs says on
 * what (gathered under the lock, written after it). */
static void WaitForSessions(SERVER *server)
{
    char names[512];
    size_t used;
    LONG left;
    SESSION *session;
    DWORD wait;

    for (;;) {
        wait = WaitForSingleObject(server->hNoSessions, STOP_REPORT_MS);
        if (wait != WAIT_OBJECT_0 && wait != WAIT_TIMEOUT)
            ErrorHandlingCode("WaitForSingleObject()", GetLastError());
        names[0] = '\0';
        used = 0;
        EnterCriticalSection(&server->lock);
        left = server->numSessions;
        for (session = server->sessions; session != NULL && used + 48 < sizeof(names);
             session = session->next)
            used += (size_t)snprintf(names + used, sizeof(names) - used, " %s (%ld I/O)",
                                     session->peer, session->ioCount);
        LeaveCriticalSection(&server->lock);
        if (left == 0)
            return;
        LogLine("Stopping: still waiting for %ld sessions:%s", left, names);
    }
}

/* The graceful stop, once accepting has stopped: end every session's I/O, wait until none is
 * outstanding, then stop the workers, join them and free everything. */
static void StopServer(SERVER *server)
{
    STOP_FAILURES failures = {{NULL, 0}, 0};
    SESSION *session;
    DWORD i;

    /* here, not in CtrlHandler: then it can never follow the Shutdown line */
    LogLine("Stopping (Ctrl+C again ends the process at once)");

    /* Cancel rather than closesocket: a worker may be using the session right now, and only the
       one who takes its count to 0 may close and free it (CancelForStop). */
    EnterCriticalSection(&server->lock);
    for (session = server->sessions; session != NULL; session = session->next)
        CancelForStop(session->hClntSock, &failures);
    LeaveCriticalSection(&server->lock);
    if (failures.count != 0) { /* the bounded wait below names what they leave stuck */
        ReportError(failures.first.call, (DWORD)failures.first.error);
        if (failures.count > 1)
            LogLine("Stopping: %d cancels failed in all", failures.count);
    }
    WaitForSessions(server);

    /* No I/O is outstanding: the port's queue holds nothing else. One sentinel per worker. */
    for (i = 0; i < server->numWorkers; i++)
        if (!PostQueuedCompletionStatus(server->hComPort, 0, 0, NULL))
            ErrorHandlingCode("PostQueuedCompletionStatus()", GetLastError());
    if (WaitForMultipleObjects(server->numWorkers, server->hWorkers, TRUE, INFINITE) == WAIT_FAILED)
        ErrorHandlingCode("WaitForMultipleObjects()", GetLastError());
    for (i = 0; i < server->numWorkers; i++)
        CloseHandle(server->hWorkers[i]);
    CloseHandle(server->hComPort);
    CloseHandle(server->hNoSessions);
    DeleteCriticalSection(&server->lock);
}

/* The main thread waits for a client or Ctrl+C, whichever comes first: one wait on two events,
 * so that the Ctrl+C handler only has to set one (a blocking accept() would need waking, and the
 * handler must not block). After a failure that would repeat, it waits ACCEPT_BACKOFF_MS for
 * Ctrl+C only, then tries accept() even with the event unset: Wine 8 does not set FD_ACCEPT again
 * after a failed accept() while clients still wait (measured in 03). */
static void AcceptUntilStop(SOCKET hServSock, WSAEVENT hAcceptEvent, SERVER *server)
{
    WSAEVENT events[2];
    BOOL paused = FALSE;
    WSANETWORKEVENTS netEvents;

    events[0] = g_hStopEvent; /* first: with both set, the wait names the lower index */
    events[1] = hAcceptEvent;
    for (;;) {
        DWORD which = WSAWaitForMultipleEvents(paused ? 1 : 2, events, FALSE,
                                               paused ? ACCEPT_BACKOFF_MS : WSA_INFINITE, FALSE);
        if (which == WSA_WAIT_EVENT_0)
            return;
        if (which == WSA_WAIT_FAILED)
            ErrorHandling("WSAWaitForMultipleEvents()"); /* only a bad handle, a bug */
        /* Resets the event; accept() re-arms FD_ACCEPT, so it is set again while more wait. */
        if (WSAEnumNetworkEvents(hServSock, hAcceptEvent, &netEvents) == SOCKET_ERROR)
            ErrorHandling("WSAEnumNetworkEvents()");
        paused = FALSE;
        AcceptClient(hServSock, server, &paused);
    }
}

/* The workers and the accept event, then "Listening on port N": the server accepts now. The main
 * thread accepts; the workers do every client's I/O. Returns after Ctrl+C, once the server has
 * stopped, with the last line. */
static void ServeClients(SOCKET hServSock)
{
    SERVER server;
    SOCKADDR_IN servAdr;
    int adrSz = sizeof(servAdr);
    WSAEVENT hAcceptEvent;

    StartServer(&server);
    /* FD_ACCEPT sets hAcceptEvent while a client waits; it also makes hServSock non-blocking. */
    hAcceptEvent = WSACreateEvent();
    if (hAcceptEvent == WSA_INVALID_EVENT)
        ErrorHandling("WSACreateEvent()");
    if (WSAEventSelect(hServSock, hAcceptEvent, FD_ACCEPT) == SOCKET_ERROR)
        ErrorHandling("WSAEventSelect()");
    g_hStopEvent = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (g_hStopEvent == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    if (getsockname(hServSock, (SOCKADDR *)&servAdr, &adrSz) == SOCKET_ERROR)
        ErrorHandling("getsockname()");
    LogLine("Listening on port %u", ntohs(servAdr.sin_port));
    /* A Ctrl+C before this line found STARTING and set no event: then the loop never starts. */
    if (InterlockedCompareExchange(&g_state, SERVING, STARTING) == STARTING)
        AcceptUntilStop(hServSock, hAcceptEvent, &server);
    CloseHandle(g_hStopEvent);
    closesocket(hServSock); /* only this thread used it */
    WSACloseEvent(hAcceptEvent);
    StopServer(&server);
    TraceWrite(); /* with --trace: every record, to its file, before the last line */
    LogLine("Shutdown: %lld accepted, %lld closed, %lld bytes echoed",
            (long long)server.numAccepted, (long long)server.numClosed,
            (long long)server.bytesEchoed);
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
    ServeClients(hServSock); /* returns after Ctrl+C, hServSock closed */

    WSACleanup();
    return 0;
}
