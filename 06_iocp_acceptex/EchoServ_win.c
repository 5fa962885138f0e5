/*
 * 06_iocp_acceptex/EchoServ_win.c - an IOCP echo server that accepts with AcceptEx.
 *
 * Stage 6 of 7: IOCP, and accepting with AcceptEx.
 *
 * What this stage teaches:
 * Accepting becomes overlapped I/O too: the listening socket is associated with the port, and
 * AcceptEx calls are posted on it in advance, each with a socket made beforehand.
 * A client that connects completes one of them, on the port, like any other I/O, and a worker
 * takes it from there.
 *
 * Changed from the previous stage:
 * No thread waits in accept() any more: the main thread only waits for Ctrl+C (and retries the
 * AcceptEx calls that could not be posted).
 * Sessions come from a pool made at start, and each has a bounded send queue.
 * The stop of 05 also waits for every pending AcceptEx to come back, cancelled.
 *
 * What the book / notes do, and what we do instead:
 * The notes' IOCP_Server has this shape: a pool of client infos made once, an AcceptEx posted for
 * each, the listening socket on the port, and a send queue per client (SendMsg queues, one WSASend
 * at a time, the next one posted when it completes).
 * Its accepter thread (ReadyAccept) is not needed: AcceptEx completes on the port, and a worker
 * posts the next one.
 *
 * Handled here:
 *   - a 0-byte read (the client closed) or an error (a reset) ends that client only.
 *   - a failed accept concerns one connection (e.g. it was reset while waiting): log, go on.
 *   - payloads are bytes, never strings: no str* function touches them.
 *   - a short WSASend is completed by posting the rest.
 *   - the OVERLAPPED and the lpFlags argument are reset before every post.
 *   - a post that fails at once closes the client: no completion will ever come for it.
 *   - the send queue is bounded (MAX_SEND_QUEUE): while it is full the session posts no new
 *     receive, so a client that never reads cannot grow the server's memory.
 *   - a session is closed and reused only once its I/O has completed, never while the system may
 *     still write into its OVERLAPPED and buffer.
 *   - the limit: MAX_CLIENTS = 1,000 clients at once; the pool has room beyond it (SPARE_SESSIONS),
 *     so with 1,000 clients connected the spare sessions still accept, and client 1,001 is accepted
 *     and closed at once with a log line (a flood of them: one line a second, with a count).
 *   - all four outcomes of GetQueuedCompletionStatus are told apart: a completed I/O; a failed I/O
 *     (FALSE with an OVERLAPPED: close that client); a failed wait (FALSE without one: the key
 *     means nothing); the stop's sentinel. No client's failure ever ends a worker.
 *   - each session counts its outstanding I/O: raised BEFORE each post (another worker may run the
 *     completion before WSARecv returns), lowered at each completion, and where a post fails at
 *     once. Whoever takes it to 0 closes the session, once, and it accepts again.
 *   - the per-I/O data embeds the OVERLAPPED and comes back with CONTAINING_RECORD.
 *   - AcceptEx and GetAcceptExSockaddrs are loaded with WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER);
 *     each address slot is sizeof(SOCKADDR_STORAGE) + 16 bytes; the receive length is 0, so a
 *     client that connects and waits is accepted at once, not when it first sends.
 *   - every free session has an AcceptEx pending, so a burst of 1,000 connects is taken without
 *     waiting, and a session accepts again after EVERY use, failed accepts included; one whose
 *     AcceptEx cannot be posted (out of sockets or memory, for now) is retried 100 ms later by the
 *     main thread, never dropped: a shortage that passes leaves the whole pool accepting.
 *   - SO_UPDATE_ACCEPT_CONTEXT on each accepted socket (Windows needs it; Wine does not check), and
 *     the peer's address from GetAcceptExSockaddrs.
 *   - the session is found from the OVERLAPPED: an AcceptEx completion carries the LISTENING
 *     socket's completion key.
 *   - no line is written while a lock is held (a blocked console or pipe would stall every thread
 *     that needs the lock); a cancel holds (a closing flag, checked under the session's lock).
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
#include <mswsock.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../common/ErrorHandling.h"
#include "../common/Trace.h" /* --trace FILE: the recorder behind the pictures, off unless asked */

#define BUF_SIZE 8192
#define MAX_CLIENTS 1000 /* served at once; the pool's memory is all allocated at start, and each
                            client may add up to MAX_SEND_QUEUE queued messages of about 8 KB */
#define SPARE_SESSIONS 16 /* the pool's room beyond the limit: they accept while all are busy */
#define POOL_SIZE (MAX_CLIENTS + SPARE_SESSIONS)
#define MAX_SEND_QUEUE 4  /* messages a session holds for a slow reader before it stops receiving */
#define ADDR_SLOT (sizeof(SOCKADDR_STORAGE) + 16) /* AcceptEx: the largest address + 16, each */
#define MAX_WORKERS MAXIMUM_WAIT_OBJECTS /* 64: the stop joins them all with one wait */
#define ACCEPT_TRIES 8    /* AcceptEx fails at once for each reset connection it meets: retry */
#define ACCEPT_RETRY_MS 100 /* a session whose AcceptEx could not be posted tries again after this */
#define REPORT_EVERY_MS 1000 /* failed AcceptEx calls, and clients over the limit: at most one
                                line a second each, with a count */
#define STOP_REPORT_MS 1000 /* the stop names the sessions it still waits for, once a second */

enum { IO_ACCEPT, IO_RECV, IO_SEND };

/* One I/O: the session's AcceptEx or WSARecv into buf, or a queued message, buf[sendPos..sendLen)
 * not sent yet. While it is pending the system owns overlapped, buf and recvFlags: none may move
 * or be freed. */
typedef struct PER_IO_DATA {
    WSAOVERLAPPED overlapped; /* the port gives its address back: CONTAINING_RECORD finds the rest */
    WSABUF wsaBuf;
    char buf[BUF_SIZE];
    DWORD recvFlags;          /* WSARecv's in/out lpFlags: kept beside the OVERLAPPED, not on a stack */
    DWORD sendPos, sendLen;   /* a message: sent up to sendPos */
    int rwMode;               /* IO_ACCEPT, IO_RECV or IO_SEND: which I/O completed */
    struct SESSION *session;  /* the owner: the completion key of an AcceptEx is not */
    struct PER_IO_DATA *next; /* the next message in the send queue */
} PER_IO_DATA;

/* A call that failed while a lock was held: reported once the lock is released. */
typedef struct {
    const char *call;            /* NULL: nothing failed */
    int error;
} FAILURE;

/* A line about clients over the limit, taken under the server's lock and written after it. */
typedef struct {
    char peer[64];               /* the last client closed over the limit */
    LONG64 count;                /* closed since the last such line, this one included */
    LONG64 total;                /* closed over the limit since the start */
} REFUSAL_LINE;

/* One client, from a pool made once: it waits in an AcceptEx, serves a client, accepts again. */
typedef struct SESSION {
    SOCKET hClntSock;
    char peer[64];
    PER_IO_DATA ioData;          /* the AcceptEx, then each WSARecv: never both at once */
    struct SERVER *server;       /* what every thread shares */
    volatile LONG ioCount;       /* posted, not yet completed I/O: whoever takes it to 0 closes */
    BOOL connected;              /* serving a client (guarded by the server's lock) */
    CRITICAL_SECTION lock;       /* guards the send queue: a receive and a send may end at once */
    PER_IO_DATA *sendHead, *sendTail; /* the send queue: sendHead's WSASend is outstanding */
    int sendCount;
    BOOL recvPaused;             /* the queue was full: a send's completion posts the WSARecv */
    BOOL closing;                /* an error path ends it: post nothing more (the session's lock) */
    struct SESSION *nextRetry;   /* in the server's retry list (guarded by the server's lock) */
} SESSION;

/* What the workers and the main thread share. */
typedef struct SERVER {
    HANDLE hComPort;
    HANDLE hWorkers[MAX_WORKERS];
    DWORD numWorkers;
    SOCKET hServSock;
    LPFN_ACCEPTEX pfnAcceptEx;
    LPFN_GETACCEPTEXSOCKADDRS pfnGetAcceptExSockaddrs;
    CRITICAL_SECTION lock;      /* guards stopping, each AcceptEx post, connected, the counts, the
                                   retry list and the failure and refusal reports */
    BOOL stopping;
    SESSION *retryHead;         /* sessions whose AcceptEx could not be posted: retried later */
    HANDLE hRetryEvent;         /* auto-reset: set when the retry list stops being empty */
    LONG64 acceptFailures;      /* failed AcceptEx calls (resets not counted), since the last
                                   time every session accepted */
    LONG64 reportedFailures;    /* how many of them the last report line had counted */
    ULONGLONG lastReport;       /* GetTickCount64() of the last report line */
    LONG64 refusals;            /* clients closed over the limit, since the start */
    LONG64 reportedRefusals;    /* how many of them the refusal lines have counted */
    ULONGLONG lastRefusalLine;  /* GetTickCount64() of the last refusal line */
    char lastRefused[64];       /* the last one's address: a line written later names it */
    SESSION *sessions;          /* the pool: POOL_SIZE sessions */
    LONG numSessions;           /* sessions in use, accepting or serving: 0 once all have stopped */
    LONG numClients;            /* sessions serving a client: MAX_CLIENTS at most */
    HANDLE hNoSessions;         /* manual-reset event, set once numSessions is 0 */
    volatile LONG64 numAccepted, numClosed; /* 64-bit: a LONG wraps after 2^31 connections */
    volatile LONG64 bytesEchoed;
} SERVER;

/* The Ctrl+C handler runs on a thread of its own and takes no parameter: what it needs is global.
 * g_state also says whether the main thread waits for the stop event: only once it is SERVING. */
enum { STARTING, SERVING, STOPPING };
static volatile LONG g_state = STARTING;
static HANDLE g_hStopEvent;

/* The accepting functions follow the worker, in the place of 05's AcceptClient; the worker
 * and CloseSession call them before that. */
static void PostAccept(SESSION *session);
static void OnAcceptFailed(SERVER *server, DWORD err);
static BOOL OnAcceptCompleted(SESSION *session);

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

    /* WSA_FLAG_OVERLAPPED: AcceptEx is overlapped I/O on the listening socket. */
    hServSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("WSASocketW()");

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

/* Reports what failed while a lock was held, now that it is released: a line written under a
 * lock can block (a console in QuickEdit mode with a selection, a pipe nobody reads), and every
 * thread that needs the lock would block behind it. */
static void ReportFailure(const FAILURE *failure)
{
    if (failure->call != NULL)
        ReportError(failure->call, (DWORD)failure->error);
}

/* An error path has decided that the session ends: no post on it may succeed after this one.
 * CancelIoEx ends only what is pending NOW: a worker finishing the session's other I/O a moment
 * later would post again (its WSARecv after a failed send: the session would hold its slot and
 * echo nothing). So the flag is set first, under the session's lock, and every post checks it
 * under the same lock (PostRecv, PostSend): a post either came before (it is pending, and the
 * cancel below ends it) or sees the flag and posts nothing. The caller holds the session's lock.
 * The cancel's failure is reported by the caller, after the lock. */
static void EndSession(SESSION *session, FAILURE *failure)
{
    session->closing = TRUE;
    if (!CancelIoEx((HANDLE)session->hClntSock, NULL) && GetLastError() != ERROR_NOT_FOUND &&
        failure->call == NULL) { /* ERROR_NOT_FOUND: nothing was pending */
        failure->call = "CancelIoEx()";
        failure->error = (int)GetLastError();
    }
}

/* Posts a receive into the whole buffer. Done at once or pending, its completion is queued to the
 * port, for any worker; only a failure at once (no completion will come), or a session that is
 * closing, returns FALSE. The caller holds the session's lock, and reports *failure after it. */
static BOOL PostRecv(SESSION *session, FAILURE *failure)
{
    PER_IO_DATA *ioData = &session->ioData;

    if (session->closing)
        return FALSE;
    ResetOverlapped(ioData);
    ioData->recvFlags = 0; /* in/out: WSARecv may have written to it last time */
    ioData->rwMode = IO_RECV;
    ioData->wsaBuf.buf = ioData->buf;
    ioData->wsaBuf.len = BUF_SIZE;
    /* Counted BEFORE the call, every field above set: a worker may run the completion before
       WSARecv even returns here. */
    InterlockedIncrement(&session->ioCount);
    if (WSARecv(session->hClntSock, &ioData->wsaBuf, 1, NULL, &ioData->recvFlags,
                &ioData->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            if (err != WSAESHUTDOWN) { /* 10058: the stop has shut it down; not worth a line */
                failure->call = "WSARecv()"; /* e.g. 10054: the client reset */
                failure->error = err;
            }
            InterlockedDecrement(&session->ioCount); /* here, and only here: nothing completes */
            EndSession(session, failure); /* the pending send, if any, ends too */
            return FALSE;
        }
    }
    return TRUE;
}

/* Posts a send of what is not sent yet of msg, the head of the queue. Same rules as PostRecv. */
static BOOL PostSend(SESSION *session, PER_IO_DATA *msg, FAILURE *failure)
{
    if (session->closing)
        return FALSE;
    ResetOverlapped(msg);
    msg->wsaBuf.buf = msg->buf + msg->sendPos;
    msg->wsaBuf.len = msg->sendLen - msg->sendPos;
    InterlockedIncrement(&session->ioCount);
    if (WSASend(session->hClntSock, &msg->wsaBuf, 1, NULL, 0,
                &msg->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            if (err != WSAESHUTDOWN) { /* 10058: the stop has shut it down; not worth a line */
                failure->call = "WSASend()"; /* under Wine, 10054 at once on a reset client */
                failure->error = err;
            }
            InterlockedDecrement(&session->ioCount);
            EndSession(session, failure); /* the pending receive, if any, too */
            return FALSE;
        }
    }
    return TRUE;
}

/* The notes' SendMsg: queues a copy of the bytes, and sends it at once if no WSASend is
 * outstanding (else the completion of the one before sends it). Then receives again, unless the
 * queue is full: that receive waits for a send to complete (OnSendCompleted). */
static BOOL SendMsg(SESSION *session, const char *data, DWORD len)
{
    PER_IO_DATA *msg = malloc(sizeof(*msg));
    FAILURE failure = {NULL, 0};
    BOOL ok = TRUE;

    if (msg == NULL) { /* post nothing more: the session ends once its queue is sent */
        ReportError("malloc()", ERROR_NOT_ENOUGH_MEMORY);
        return FALSE;
    }
    memcpy(msg->buf, data, len);
    msg->sendPos = 0;
    msg->sendLen = len;
    msg->rwMode = IO_SEND;
    msg->session = session;
    msg->next = NULL;

    EnterCriticalSection(&session->lock);
    if (session->sendTail != NULL)
        session->sendTail->next = msg;
    else
        session->sendHead = msg;
    session->sendTail = msg;
    if (++session->sendCount == 1)
        ok = PostSend(session, msg, &failure);
    if (ok && session->sendCount < MAX_SEND_QUEUE)
        ok = PostRecv(session, &failure);
    else if (ok)
        session->recvPaused = TRUE;
    LeaveCriticalSection(&session->lock);
    ReportFailure(&failure);
    return ok;
}

/* A receive is over: queue what came, or post nothing on 0 bytes (the client closed or
 * half-closed): what is queued is still sent, then the count falls to 0 and the session closes. */
static BOOL OnRecvCompleted(SESSION *session, DWORD bytes)
{
    Trace(TRACE_RECV, session->hClntSock, bytes);
    if (bytes == 0)
        return FALSE;
    return SendMsg(session, session->ioData.buf, bytes);
}

/* A send is over: a short send posts the rest; else the message leaves the queue, the next one
 * is sent, and a receive held back by a full queue is posted now. */
static BOOL OnSendCompleted(SESSION *session, PER_IO_DATA *msg, DWORD bytes)
{
    FAILURE failure = {NULL, 0};
    BOOL ok = TRUE;

    Trace(TRACE_SENT, session->hClntSock, bytes);
    InterlockedExchangeAdd64(&session->server->bytesEchoed, bytes);
    EnterCriticalSection(&session->lock);
    msg->sendPos += bytes;
    if (msg->sendPos < msg->sendLen) {
        ok = PostSend(session, msg, &failure);
    } else {
        session->sendHead = msg->next;
        if (session->sendHead == NULL)
            session->sendTail = NULL;
        session->sendCount--;
        free(msg);
        if (session->sendHead != NULL)
            ok = PostSend(session, session->sendHead, &failure);
        if (ok && session->recvPaused) {
            session->recvPaused = FALSE;
            ok = PostRecv(session, &failure);
        }
    }
    LeaveCriticalSection(&session->lock);
    ReportFailure(&failure);
    return ok;
}

/* A session leaves use for good: only at the stop. The caller holds the server's lock. */
static void ParkSession(SERVER *server)
{
    if (--server->numSessions == 0)
        SetEvent(server->hNoSessions); /* only a wake-up: the stop reads numSessions itself */
}

/* Called only when no I/O is pending, so nothing writes into the session any more. Closes the
 * socket, drops what is still queued, and puts the session back to accepting. */
static void CloseSession(SESSION *session)
{
    SERVER *server = session->server;
    BOOL wasConnected;

    EnterCriticalSection(&server->lock); /* not connected first: the stop no longer reaches it */
    wasConnected = session->connected;
    if (wasConnected) {
        session->connected = FALSE;
        server->numClients--; /* the slot is free now */
    }
    LeaveCriticalSection(&server->lock);

    Trace(TRACE_CLOSED, session->hClntSock, 0);
    closesocket(session->hClntSock);
    while (session->sendHead != NULL) { /* left by a failed send */
        PER_IO_DATA *msg = session->sendHead;
        session->sendHead = msg->next;
        free(msg);
    }
    session->sendTail = NULL;
    session->sendCount = 0;
    session->recvPaused = FALSE;
    session->closing = FALSE; /* the next client's: no I/O is pending, nobody else looks */
    if (wasConnected) {
        InterlockedIncrement64(&server->numClosed);
        LogLine("Closed client %s", session->peer);
    }
    PostAccept(session); /* after every use, failed accepts included: else the pool shrinks */
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

/* A worker: takes completions off the port, for any client, until the stop's sentinel. The
 * OVERLAPPED points into a PER_IO_DATA, which names its session. */
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
        /* Not from the key: an AcceptEx completion carries the listening socket's key. */
        ioData = CONTAINING_RECORD(overlapped, PER_IO_DATA, overlapped);
        session = ioData->session;
        if (!ok) {
            /* That I/O failed; key and OVERLAPPED are valid. A Win32 code: 64 (the client reset),
               1236 (aborted), 995 (cancelled); IsExpectedFailure says which need no line. Post
               nothing, and end the session's other I/O (EndSession): it closes once both are over. */
            DWORD err = GetLastError();
            FAILURE failure = {NULL, 0};
            BOOL quiet;
            if (ioData->rwMode == IO_ACCEPT) {
                if (!IsExpectedFailure(err, g_state == STOPPING))
                    OnAcceptFailed(session->server, err);
            } else {
                EnterCriticalSection(&session->lock);
                quiet = IsExpectedFailure(err, session->closing || g_state == STOPPING);
                EndSession(session, &failure);
                LeaveCriticalSection(&session->lock);
                if (!quiet) /* after the lock: no log line is written under one */
                    ReportError(ioData->rwMode == IO_SEND ? "WSASend()" : "WSARecv()", err);
                ReportFailure(&failure);
            }
        } else if (ioData->rwMode == IO_ACCEPT) {
            OnAcceptCompleted(session);
        } else if (ioData->rwMode == IO_SEND) {
            OnSendCompleted(session, ioData, bytes);
        } else {
            OnRecvCompleted(session, bytes);
        }
        /* Lowered last, after the next I/O is posted: the count of a session still in use never
           touches 0 between two of its I/Os. When nothing was posted, this closes it. */
        ReleaseSession(session);
    }
}

/* A connection reset while it waited in the backlog makes AcceptEx fail at once (10054; Wine:
 * 59, ERROR_UNEXP_NET_ERR): a failure of that connection, not of the session. */
static BOOL IsResetBeforeAccept(int err)
{
    return err == WSAECONNRESET || err == ERROR_UNEXP_NET_ERR;
}

/* Gives the session a new socket and posts an AcceptEx with it. Receive length 0: it completes
 * when a client connects, not when it first sends. Returns 0 once posted (done at once or pending,
 * the completion is queued to the port), else the error of a failure at once, and the failed call
 * in *failedCall: then no completion will come, and the socket is closed again. The caller holds
 * the server's lock: nothing is reported here. */
static int TryAcceptEx(SESSION *session, const char **failedCall)
{
    SERVER *server = session->server;
    PER_IO_DATA *ioData = &session->ioData;
    DWORD bytes = 0;
    int err;

    session->hClntSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (session->hClntSock == INVALID_SOCKET) {
        *failedCall = "WSASocketW()"; /* 10024 or 10055: out of sockets or buffers, for now */
        return WSAGetLastError();
    }
    ResetOverlapped(ioData);
    ioData->rwMode = IO_ACCEPT;
    InterlockedIncrement(&session->ioCount);
    Trace(TRACE_ACCEPT_POSTED, session->hClntSock, 0);
    if (server->pfnAcceptEx(server->hServSock, session->hClntSock, ioData->buf, 0,
                            ADDR_SLOT, ADDR_SLOT, &bytes, &ioData->overlapped))
        return 0;
    err = WSAGetLastError();
    if (err == ERROR_IO_PENDING)
        return 0;
    *failedCall = "AcceptEx()";
    InterlockedDecrement(&session->ioCount);
    closesocket(session->hClntSock);
    return err;
}

/* Counts a failed AcceptEx (a post or a completion) and says whether a line is due: the first at once, then at most
 * one a second, counting those not reported yet (a shortage of sockets fails a whole pool's posts
 * again every ACCEPT_RETRY_MS). The caller holds the server's lock; *count gets the number. */
static BOOL CountAcceptFailure(SERVER *server, LONG64 *count)
{
    ULONGLONG now = GetTickCount64();

    server->acceptFailures++;
    if (server->reportedFailures != 0 && now - server->lastReport < REPORT_EVERY_MS)
        return FALSE;
    *count = server->acceptFailures - server->reportedFailures;
    server->reportedFailures = server->acceptFailures;
    server->lastReport = now;
    return TRUE;
}

/* The failure line, outside the lock: the call and the last one's error, then how many failed since
 * the last line and what happens to their sessions: a failed post waits on the retry list; a
 * failed completion closes its socket and the session posts a new AcceptEx at once. */
static void ReportAcceptFailure(const char *call, int err, LONG64 count, BOOL posted)
{
    char note[160];

    if (posted)
        snprintf(note, sizeof(note), "%lld failed since the last line; each session posts a new "
                 "AcceptEx at once", (long long)count);
    else
        snprintf(note, sizeof(note), "%lld failed since the last line; each session tries again "
                 "after %d ms", (long long)count, ACCEPT_RETRY_MS);
    ReportErrorNote(call, (DWORD)err, note);
}

/* Puts a free session back to accepting. Under the server's lock, which the stop takes to cancel
 * the accepts: an AcceptEx is posted before the stop (and cancelled by it) or not at all. A reset
 * connection concerns that connection only: try again at once with a fresh socket. Any other
 * failure at once (out of sockets or memory: a shortage that may pass) never takes the session
 * out of the pool: it goes on the retry list, and the main thread posts it again after
 * ACCEPT_RETRY_MS (RetryAccepts). So the pool never shrinks while the server runs. */
static void PostAccept(SESSION *session)
{
    SERVER *server = session->server;
    const char *failedCall = NULL;
    int tries, err = 0;
    BOOL report = FALSE, wake = FALSE;
    LONG64 count = 0;

    EnterCriticalSection(&server->lock);
    for (tries = 0; tries < ACCEPT_TRIES && !server->stopping; tries++) {
        err = TryAcceptEx(session, &failedCall);
        if (!IsResetBeforeAccept(err))
            break;
    }
    if (server->stopping) {
        ParkSession(server);
    } else if (err != 0) { /* ACCEPT_TRIES resets in a row land here too, uncounted */
        if (!IsResetBeforeAccept(err))
            report = CountAcceptFailure(server, &count);
        wake = server->retryHead == NULL;
        session->nextRetry = server->retryHead;
        server->retryHead = session;
    }
    LeaveCriticalSection(&server->lock);
    if (report)
        ReportAcceptFailure(failedCall, err, count, FALSE);
    if (wake && !SetEvent(server->hRetryEvent))
        ReportError("SetEvent()", GetLastError()); /* cannot fail on a valid handle */
}

/* A failed AcceptEx completion (not the stop's cancel). A connection reset before it was
 * accepted (also 64, ERROR_NETNAME_DELETED, here) is no failure of the session: no line. Anything
 * else is counted and reported like a failed post, at most once a second: under Wine, while no
 * descriptor is left, each pending AcceptEx that a connection reaches fails with 4
 * (ERROR_TOO_MANY_OPEN_FILES), and a line each would flood the log, and block every worker on a
 * log that is not read. The session accepts again either way (CloseSession, PostAccept). */
static void OnAcceptFailed(SERVER *server, DWORD err)
{
    LONG64 count = 0;
    BOOL report;

    if (IsResetBeforeAccept((int)err) || err == ERROR_NETNAME_DELETED)
        return;
    EnterCriticalSection(&server->lock);
    report = CountAcceptFailure(server, &count);
    LeaveCriticalSection(&server->lock);
    if (report)
        ReportAcceptFailure("AcceptEx()", (int)err, count, TRUE);
}

/* Whether a refusal line is due, as for failed accepts (CountAcceptFailure): the first client
 * over the limit at once, then at most one line a second, counting those held back; `now` (the
 * stop) does not wait. A line for each would let a flood of clients fill the log, and block every
 * worker on a log nobody reads. The caller holds the server's lock. */
static BOOL TakeRefusalLine(SERVER *server, BOOL now, REFUSAL_LINE *line)
{
    ULONGLONG tick = GetTickCount64();

    if (server->refusals == server->reportedRefusals)
        return FALSE; /* every one is counted in a line already */
    if (!now && server->reportedRefusals != 0 && tick - server->lastRefusalLine < REPORT_EVERY_MS)
        return FALSE;
    memcpy(line->peer, server->lastRefused, sizeof(line->peer));
    line->count = server->refusals - server->reportedRefusals;
    line->total = server->refusals;
    server->reportedRefusals = server->refusals;
    server->lastRefusalLine = tick;
    return TRUE;
}

/* The refusal line, outside the lock: the client, as in 01-05; after clients held back, also how
 * many more since the last line. Each client over the limit is counted in exactly one line. */
static void ReportRefusal(const REFUSAL_LINE *line)
{
    if (line->count == 1)
        LogLine("Too many clients (%d): closed %s", MAX_CLIENTS, line->peer);
    else
        LogLine("Too many clients (%d): closed %s and %lld more since the last line (%lld in all)",
                MAX_CLIENTS, line->peer, (long long)(line->count - 1), (long long)line->total);
}

/* Writes the refusal line that a flood held back, once it is due (or now, at the stop): the
 * main thread calls it once a second, so the count of a flood that has ended is not lost. */
static void ReportHeldRefusals(SERVER *server, BOOL now)
{
    REFUSAL_LINE line = {{0}, 0, 0};
    BOOL due;

    EnterCriticalSection(&server->lock);
    due = TakeRefusalLine(server, now, &line);
    LeaveCriticalSection(&server->lock);
    if (due)
        ReportRefusal(&line);
}

/* An AcceptEx is over: the session serves the new client, or closes it at once when the server
 * is full (or stopping). Either way, once its I/O count falls to 0 it accepts again. */
static BOOL OnAcceptCompleted(SESSION *session)
{
    SERVER *server = session->server;
    SOCKADDR *localAdr, *remoteAdr;
    int localLen = 0, remoteLen = 0;
    SOCKADDR_IN clntAdr;
    FAILURE failure = {NULL, 0};
    REFUSAL_LINE line = {{0}, 0, 0};
    BOOL full, ok, report = FALSE;

    /* The accepted socket takes the listening socket's properties only now: Windows wants this
       before getpeername, getsockname, getsockopt or setsockopt on it (Wine does not check). */
    if (setsockopt(session->hClntSock, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT,
                   (char *)&server->hServSock, sizeof(server->hServSock)) == SOCKET_ERROR) {
        ReportError("setsockopt(SO_UPDATE_ACCEPT_CONTEXT)", WSAGetLastError());
        return FALSE;
    }
    /* The two addresses AcceptEx wrote after the (empty) data, in its own format. */
    server->pfnGetAcceptExSockaddrs(session->ioData.buf, 0, ADDR_SLOT, ADDR_SLOT,
                                    &localAdr, &localLen, &remoteAdr, &remoteLen);
    memset(&clntAdr, 0, sizeof(clntAdr));
    if (remoteLen > (int)sizeof(clntAdr))
        remoteLen = sizeof(clntAdr);
    memcpy(&clntAdr, remoteAdr, (size_t)remoteLen);
    FormatAddress(&clntAdr, session->peer, sizeof(session->peer));
    InterlockedIncrement64(&server->numAccepted);

    EnterCriticalSection(&server->lock); /* connected before the stop's pass, or not at all */
    full = server->numClients == MAX_CLIENTS;
    ok = !full && !server->stopping;
    if (ok) {
        server->numClients++;
        session->connected = TRUE;
    } else if (full) { /* counted now; its line may wait (TakeRefusalLine) */
        server->refusals++;
        memcpy(server->lastRefused, session->peer, sizeof(server->lastRefused));
        report = TakeRefusalLine(server, FALSE, &line);
    }
    LeaveCriticalSection(&server->lock);
    if (!ok) {
        if (report)
            ReportRefusal(&line);
        InterlockedIncrement64(&server->numClosed);
        return FALSE; /* no post: CloseSession closes it and accepts again */
    }
    Trace(TRACE_ACCEPTED, session->hClntSock, 0);
    LogLine("Connected client %s", session->peer);
    /* From now on every completion of this socket is queued to the port. The key is not used:
       the session comes from the OVERLAPPED, as for the AcceptEx. Then the first receive. */
    if (CreateIoCompletionPort((HANDLE)session->hClntSock, server->hComPort, 0, 0) == NULL) {
        ReportError("CreateIoCompletionPort()", GetLastError());
        return FALSE;
    }
    EnterCriticalSection(&session->lock);
    ok = PostRecv(session, &failure);
    LeaveCriticalSection(&session->lock);
    ReportFailure(&failure);
    return ok;
}

/* AcceptEx and GetAcceptExSockaddrs are Microsoft extensions: their addresses are asked of the
 * socket's provider at run time, as Microsoft's documentation requires. */
static void LoadExtension(SOCKET hSock, GUID guid, void *function, DWORD size)
{
    DWORD bytes = 0;

    if (WSAIoctl(hSock, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), function, size,
                 &bytes, NULL, NULL) == SOCKET_ERROR)
        ErrorHandling("WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)");
}

/* The port, the listening socket on it, the pool and the workers. Concurrency 0: the port lets
 * as many workers run at once as there are processors. One worker per processor, the notes' rule:
 * when one blocks (here only in printf), the port may wake another; 2 x processors is the other
 * usual rule. Only a measurement settles it (see the README). */
static void StartServer(SERVER *server, SOCKET hServSock)
{
    GUID acceptExId = WSAID_ACCEPTEX, sockaddrsId = WSAID_GETACCEPTEXSOCKADDRS;
    SYSTEM_INFO sysInfo;
    DWORD i;

    memset(server, 0, sizeof(*server));
    server->hServSock = hServSock;
    InitializeCriticalSection(&server->lock);
    /* Not set, unlike 05's: every session of the pool is in use (accepting) from the start; it is
       set once, when the last one parks. */
    server->hNoSessions = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (server->hNoSessions == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    server->hRetryEvent = CreateEvent(NULL, FALSE, FALSE, NULL);
    if (server->hRetryEvent == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    server->hComPort = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (server->hComPort == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());
    LoadExtension(hServSock, acceptExId, &server->pfnAcceptEx, sizeof(server->pfnAcceptEx));
    LoadExtension(hServSock, sockaddrsId, &server->pfnGetAcceptExSockaddrs,
                  sizeof(server->pfnGetAcceptExSockaddrs));
    /* The AcceptEx completions come to the port too; key 0, not used. */
    if (CreateIoCompletionPort((HANDLE)hServSock, server->hComPort, 0, 0) == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());

    server->sessions = calloc(POOL_SIZE, sizeof(SESSION));
    if (server->sessions == NULL)
        ErrorHandlingCode("calloc()", ERROR_NOT_ENOUGH_MEMORY);
    for (i = 0; i < POOL_SIZE; i++) {
        server->sessions[i].server = server;
        server->sessions[i].ioData.session = &server->sessions[i];
        InitializeCriticalSection(&server->sessions[i].lock);
    }
    server->numSessions = POOL_SIZE; /* all in use from the start: each one accepts */

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

/* Ends a connected session's I/O for the stop: shutdown first, so that any post made after this
 * fails at once (10058), then CancelIoEx for what is pending now (995). The caller holds the
 * server's lock. Expected failures: shutdown on a client that has just gone (WSAENOTCONN;
 * WSAECONNRESET or WSAECONNABORTED if it reset), the cancel with nothing pending
 * (ERROR_NOT_FOUND); anything else is noted. */
static void CancelForStop(SOCKET hSock, BOOL shut, STOP_FAILURES *failures)
{
    if (shut && shutdown(hSock, SD_BOTH) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSAENOTCONN && err != WSAECONNRESET && err != WSAECONNABORTED)
            NoteStopFailure(failures, "shutdown()", err);
    }
    if (!CancelIoEx((HANDLE)hSock, NULL) && GetLastError() != ERROR_NOT_FOUND)
        NoteStopFailure(failures, "CancelIoEx()", (int)GetLastError());
}

/* Waits until no session is in use. hNoSessions is only the wake-up: the count, read under the
 * lock, decides (so a lost SetEvent cannot hang the stop). Every STOP_REPORT_MS without the end,
 * one line names the sessions still in use and their outstanding I/O: a stop that hangs says on
 * what (gathered under the lock, written after it). */
static void WaitForSessions(SERVER *server)
{
    char names[512];
    size_t used;
    LONG left;
    DWORD i, wait;

    for (;;) {
        wait = WaitForSingleObject(server->hNoSessions, STOP_REPORT_MS);
        if (wait != WAIT_OBJECT_0 && wait != WAIT_TIMEOUT)
            ErrorHandlingCode("WaitForSingleObject()", GetLastError());
        names[0] = '\0';
        used = 0;
        EnterCriticalSection(&server->lock);
        left = server->numSessions;
        for (i = 0; left != 0 && i < POOL_SIZE && used + 48 < sizeof(names); i++) {
            SESSION *session = &server->sessions[i];
            if (session->ioCount != 0)
                used += (size_t)snprintf(names + used, sizeof(names) - used, " %s (%ld I/O)",
                                         session->connected ? session->peer : "accepting",
                                         session->ioCount);
        }
        LeaveCriticalSection(&server->lock);
        if (left == 0)
            return;
        LogLine("Stopping: still waiting for %ld sessions:%s", left, names);
    }
}

/* The graceful stop: stop accepting, end every session's I/O, wait until none is outstanding,
 * then stop the workers, join them and free everything. */
static void StopServer(SERVER *server)
{
    STOP_FAILURES failures = {{NULL, 0}, 0};
    DWORD i;

    /* here, not in CtrlHandler: then it can never follow the Shutdown line */
    LogLine("Stopping (Ctrl+C again ends the process at once)");

    /* Under the lock PostAccept holds: no AcceptEx is posted after this, and CancelIoEx on the
       listening socket ends the pending ones (995). The listening socket is closed only at the
       end: closed now, its handle value could come back as the new socket a worker passes to
       AcceptEx, which Wine then leaves pending forever (measured). The connected sessions: cancel
       rather than closesocket, as in 05. The sessions on the retry list have no I/O: they leave
       use now (this thread is the only one that retries them). */
    EnterCriticalSection(&server->lock);
    server->stopping = TRUE;
    CancelForStop(server->hServSock, FALSE, &failures);
    for (i = 0; i < POOL_SIZE; i++)
        if (server->sessions[i].connected)
            CancelForStop(server->sessions[i].hClntSock, TRUE, &failures);
    while (server->retryHead != NULL) {
        server->retryHead = server->retryHead->nextRetry;
        ParkSession(server);
    }
    LeaveCriticalSection(&server->lock);
    if (failures.count != 0) { /* the bounded wait below names what they leave stuck */
        ReportFailure(&failures.first);
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
    ReportHeldRefusals(server, TRUE); /* no worker is left to refuse one: the count is final */
    closesocket(server->hServSock);
    for (i = 0; i < POOL_SIZE; i++)
        DeleteCriticalSection(&server->sessions[i].lock);
    free(server->sessions);
    CloseHandle(server->hComPort);
    CloseHandle(server->hNoSessions);
    CloseHandle(server->hRetryEvent);
    DeleteCriticalSection(&server->lock);
}

/* The main thread, between Ctrl+Cs: posts again the AcceptEx of every session on the retry
 * list. Those that fail again go back on it, and the main thread comes back after another
 * ACCEPT_RETRY_MS. Once the list is empty after failures, one line says the pool is whole. */
static void RetryAccepts(SERVER *server)
{
    SESSION *session, *next;
    LONG64 failures = 0;
    BOOL whole;

    EnterCriticalSection(&server->lock);
    session = server->retryHead;
    server->retryHead = NULL;
    LeaveCriticalSection(&server->lock);
    for (; session != NULL; session = next) {
        next = session->nextRetry;
        session->nextRetry = NULL;
        PostAccept(session);
    }
    EnterCriticalSection(&server->lock);
    whole = server->retryHead == NULL && server->acceptFailures != 0 && !server->stopping;
    if (whole) {
        failures = server->acceptFailures;
        server->acceptFailures = server->reportedFailures = 0; /* the next shortage: a new count */
    }
    LeaveCriticalSection(&server->lock);
    if (whole)
        LogLine("Every session accepts again (after %lld failed AcceptEx calls)",
                (long long)failures);
}

/* The main thread waits for Ctrl+C, and meanwhile it is the retry timer: when a session goes on
 * the empty retry list, hRetryEvent wakes it; it waits ACCEPT_RETRY_MS (a shortage does not pass
 * in a microsecond: retrying at once would only spin), then posts the list again. It also wakes
 * once a second for the refusal line a flood held back (ReportHeldRefusals). The simplest
 * design that is correct: the thread exists and is idle anyway; the stop, on this same thread,
 * never meets a retry half done; and no timer or extra packet on the port has to be cancelled
 * and drained at the stop. */
static void WaitForStop(SERVER *server)
{
    HANDLE events[2];
    DWORD which;

    events[0] = g_hStopEvent;
    events[1] = server->hRetryEvent;
    for (;;) {
        /* Not INFINITE: once a second it writes the refusal line a flood held back. */
        which = WaitForMultipleObjects(2, events, FALSE, REPORT_EVERY_MS);
        if (which == WAIT_OBJECT_0)
            return;
        if (which == WAIT_OBJECT_0 + 1) {
            which = WaitForSingleObject(g_hStopEvent, ACCEPT_RETRY_MS); /* the back-off */
            if (which == WAIT_OBJECT_0)
                return;
            if (which != WAIT_TIMEOUT)
                ErrorHandlingCode("WaitForSingleObject()", GetLastError());
            RetryAccepts(server);
        } else if (which != WAIT_TIMEOUT) {
            ErrorHandlingCode("WaitForMultipleObjects()", GetLastError());
        }
        ReportHeldRefusals(server, FALSE);
    }
}

/* An AcceptEx for every session of the pool, then "Listening on port N": the server accepts now
 * (a session that could not post its AcceptEx yet is retried: the line promises no number). Then
 * the workers do everything and the main thread waits for Ctrl+C, retrying those sessions.
 * Returns once the server has stopped, with the last line. */
static void ServeClients(SOCKET hServSock)
{
    SERVER server;
    SOCKADDR_IN servAdr;
    int adrSz = sizeof(servAdr);
    int i;

    StartServer(&server, hServSock);
    for (i = 0; i < POOL_SIZE; i++)
        PostAccept(&server.sessions[i]);
    g_hStopEvent = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (g_hStopEvent == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    if (getsockname(hServSock, (SOCKADDR *)&servAdr, &adrSz) == SOCKET_ERROR)
        ErrorHandling("getsockname()");
    LogLine("Listening on port %u", ntohs(servAdr.sin_port));
    if (InterlockedCompareExchange(&g_state, SERVING, STARTING) == STARTING)
        WaitForStop(&server);
    CloseHandle(g_hStopEvent);
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
    ServeClients(hServSock); /* StopServer has closed hServSock */

    WSACleanup();
    return 0;
}
