/*
 * 07_socket_pool/EchoServ_win.c - an IOCP echo server that reuses its sockets.
 *
 * Stage 7 of 7. Stage 6's AcceptEx server, and the sockets come from a pool: a closing session
 * does not closesocket() its socket, it disconnects it for reuse, overlapped, with DisconnectEx
 * (TF_REUSE_SOCKET) or TransmitFile (TF_DISCONNECT | TF_REUSE_SOCKET); when that completes, the
 * socket goes back to the pool and the next AcceptEx takes it, instead of a new WSASocket().
 * DisconnectEx is the default: client versions of Windows run at most two TransmitFile calls at
 * once (Microsoft's TransmitFile page), and under Wine 8 each TransmitFile leaks 64 KiB.
 *
 * The notes' CSocketPool (Init, Alloc, Free under an SRWLOCK) is SOCKET_POOL here. Their bug was
 * the completion key: a socket stays associated with its completion port, under its FIRST key,
 * until it is closed; associating a reused socket again fails (87) and its completions keep
 * arriving with the old session's key. Here:
 *   - each socket is associated with the port once, when the pool makes it; the session is always
 *     found from the OVERLAPPED, never from the key.
 *   - a session is disconnected only when its I/O count is 0: every byte echoed, nothing pending;
 *     and only when the client closed first, so that no TIME_WAIT delays the disconnect.
 *   - TransmitFile/DisconnectEx returning TRUE and FALSE with ERROR_IO_PENDING both mean a
 *     completion will come; only another error means none (the socket is closed then).
 *   - AcceptEx takes only a socket that is not connected: after the disconnect SO_CONNECT_TIME
 *     must say so, or the socket is closed (Wine 8 reuses none: see the README).
 *   - the stop of 06, with the pending disconnects cancelled too, and every pooled socket closed
 *     once; the last lines count the sockets made and reused.
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -o EchoServ_win.exe EchoServ_win.c -lws2_32
 * Run:   EchoServ_win.exe <port> [disconnectex|transmitfile]   (0 picks a free port)
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../common/ErrorHandling.h"

#define BUF_SIZE 8192
#define MAX_CLIENTS 1000 /* no 64-handle wait any more: about 8 KB of memory a client */
#define SPARE_SESSIONS 16 /* the pool's room beyond the limit: they accept while all are busy */
#define POOL_SIZE (MAX_CLIENTS + SPARE_SESSIONS)
#define MAX_SEND_QUEUE 4  /* messages a session holds for a slow reader before it stops receiving */
#define ADDR_SLOT (sizeof(SOCKADDR_STORAGE) + 16) /* AcceptEx: the largest address + 16, each */
#define MAX_WORKERS MAXIMUM_WAIT_OBJECTS /* 64: the stop joins them all with one wait */
#define ACCEPT_TRIES 8    /* AcceptEx fails at once for each reset connection it meets: retry */

enum { IO_ACCEPT, IO_RECV, IO_SEND, IO_DISCONNECT };

/* One I/O: the session's AcceptEx, WSARecv into buf or disconnect, or a queued message,
 * buf[sendPos..sendLen) not sent yet. While it is pending the system owns overlapped, buf and
 * recvFlags: none may move or be freed. */
typedef struct PER_IO_DATA {
    WSAOVERLAPPED overlapped; /* the port gives its address back: CONTAINING_RECORD finds the rest */
    WSABUF wsaBuf;
    char buf[BUF_SIZE];
    DWORD recvFlags;          /* WSARecv's in/out lpFlags: kept beside the OVERLAPPED, not on a stack */
    DWORD sendPos, sendLen;   /* a message: sent up to sendPos */
    int rwMode;               /* IO_ACCEPT, IO_RECV, IO_SEND, IO_DISCONNECT: which one completed */
    struct SESSION *session;  /* the owner: the completion key of an AcceptEx is not */
    struct PER_IO_DATA *next; /* the next message in the send queue */
} PER_IO_DATA;

/* One client, from a pool made once: it waits in an AcceptEx, serves a client, accepts again. */
typedef struct SESSION {
    SOCKET hClntSock;
    char peer[64];
    PER_IO_DATA ioData;          /* the AcceptEx, each WSARecv, the disconnect: one at a time */
    struct SERVER *server;       /* what every thread shares */
    volatile LONG ioCount;       /* posted, not yet completed I/O: whoever takes it to 0 closes */
    BOOL connected;              /* serving a client (guarded by the server's lock) */
    BOOL clientClosed;           /* its 0-byte read came: the client closed first (reuse it) */
    BOOL disconnecting;          /* a disconnect is pending (guarded by the server's lock) */
    CRITICAL_SECTION lock;       /* guards the send queue: a receive and a send may end at once */
    PER_IO_DATA *sendHead, *sendTail; /* the send queue: sendHead's WSASend is outstanding */
    int sendCount;
    BOOL recvPaused;             /* the queue was full: a send's completion posts the WSARecv */
} SESSION;

/* The notes' CSocketPool: free sockets, each associated with the port when it was made. */
typedef struct SOCKET_POOL {
    SRWLOCK lock;               /* guards the stack: any worker allocates or frees */
    SOCKET *sockets;            /* a stack of free sockets, room for size */
    int count, size;
    int numFresh;               /* the bottom numFresh never served a client (made by Init) */
    HANDLE hComPort;            /* where a new socket is associated, once */
    LONG numCreated, numReuses;
} SOCKET_POOL;

/* What the workers and the main thread share. */
typedef struct SERVER {
    HANDLE hComPort;
    HANDLE hWorkers[MAX_WORKERS];
    DWORD numWorkers;
    SOCKET hServSock;
    LPFN_ACCEPTEX pfnAcceptEx;
    LPFN_GETACCEPTEXSOCKADDRS pfnGetAcceptExSockaddrs;
    LPFN_TRANSMITFILE pfnTransmitFile;
    LPFN_DISCONNECTEX pfnDisconnectEx;
    BOOL useDisconnectEx;       /* the second argument: DisconnectEx (default), else TransmitFile */
    const char *disconnectName; /* "TransmitFile()" or "DisconnectEx()", for error lines */
    SOCKET_POOL pool;
    CRITICAL_SECTION lock;      /* guards stopping, the AcceptEx and disconnect posts, the flags
                                   connected and disconnecting, and the counts */
    BOOL stopping;
    SESSION *sessions;          /* the pool: POOL_SIZE sessions */
    LONG numSessions;           /* sessions in use, accepting or serving: 0 once all have stopped */
    LONG numClients;            /* sessions serving a client: MAX_CLIENTS at most */
    HANDLE hNoSessions;         /* manual-reset event, set once numSessions is 0 */
    volatile LONG numAccepted, numClosed;
    volatile LONG64 bytesEchoed;
} SERVER;

/* The Ctrl+C handler runs on a thread of its own and takes no parameter: what it needs is global.
 * g_state also says whether the main thread waits for the stop event: only once it is SERVING. */
enum { STARTING, SERVING, STOPPING };
static volatile LONG g_state = STARTING;
static HANDLE g_hStopEvent;

/* Reads the arguments: a port from 0 to 65535, then optionally how a session's socket is
 * disconnected for reuse (DisconnectEx by default); anything else prints the usage and exits 1. */
static unsigned short ParsePort(int argc, char *argv[], BOOL *useDisconnectEx)
{
    char *end = NULL;
    long port = -1;
    BOOL modeOk = argc == 2 || (argc == 3 && (strcmp(argv[2], "disconnectex") == 0 ||
                                              strcmp(argv[2], "transmitfile") == 0));

    if (modeOk)
        port = strtol(argv[1], &end, 10);
    if (!modeOk || end == argv[1] || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "Usage: %s <port> [disconnectex|transmitfile]   (0 to 65535; 0 picks a "
                "free port; the default is disconnectex)\n", argv[0]);
        exit(1);
    }
    *useDisconnectEx = !(argc == 3 && strcmp(argv[2], "transmitfile") == 0);
    return (unsigned short)port;
}

/* Ctrl+C / Ctrl+Break, on a thread the system creates for it. It only starts the stop: it sets
 * the event the main thread waits for, and returns TRUE, so the process lives on while the main
 * thread stops the server (StopServer). A second Ctrl+C ends the process at once. */
static BOOL WINAPI CtrlHandler(DWORD ctrlType)
{
    LONG before;

    if (ctrlType != CTRL_C_EVENT && ctrlType != CTRL_BREAK_EVENT)
        return FALSE;
    EndAtSecondCtrlC(); /* the stop is blocked or slow, and the user means it: now */
    before = InterlockedExchange(&g_state, STOPPING);
    if (before == SERVING)
        SetEvent(g_hStopEvent);
    return TRUE;
}

/* socket, bind, listen; prints "Listening on port N" with the real port (port 0 picks one). */
static SOCKET OpenListenSocket(unsigned short port)
{
    SOCKET hServSock;
    SOCKADDR_IN servAdr;
    int adrSz = sizeof(servAdr);
    BOOL exclusive = TRUE;

    /* WSA_FLAG_OVERLAPPED: AcceptEx is overlapped I/O on the listening socket. */
    hServSock = WSASocket(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("WSASocket()");

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

/* A new socket for the pool, associated with the port now and never again: a socket stays on
 * its port, under its first key, until it is closed (a second CreateIoCompletionPort on it fails
 * with 87, and its completions keep the first key). Key 0, unused: the OVERLAPPED names the
 * session. A failure is reported here, and its code left for the caller (WSAGetLastError). */
static SOCKET CreatePoolSocket(SOCKET_POOL *pool)
{
    SOCKET hSock = WSASocket(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    int err;

    if (hSock == INVALID_SOCKET) {
        err = WSAGetLastError();
        ReportError("WSASocket()", err);
        WSASetLastError(err);
        return INVALID_SOCKET;
    }
    if (CreateIoCompletionPort((HANDLE)hSock, pool->hComPort, 0, 0) == NULL) {
        err = (int)GetLastError();
        ReportError("CreateIoCompletionPort()", err);
        closesocket(hSock);
        WSASetLastError(err);
        return INVALID_SOCKET;
    }
    InterlockedIncrement(&pool->numCreated);
    return hSock;
}

/* The notes' Init(poolSize): room for poolSize free sockets, all made now. */
static void SocketPoolInit(SOCKET_POOL *pool, int poolSize, HANDLE hComPort)
{
    memset(pool, 0, sizeof(*pool));
    InitializeSRWLock(&pool->lock);
    pool->hComPort = hComPort;
    pool->size = poolSize;
    pool->sockets = calloc((size_t)poolSize, sizeof(SOCKET));
    if (pool->sockets == NULL)
        ErrorHandlingCode("calloc()", ERROR_NOT_ENOUGH_MEMORY);
    while (pool->count < poolSize) {
        SOCKET hSock = CreatePoolSocket(pool);
        if (hSock == INVALID_SOCKET)
            exit(1); /* at start-up: CreatePoolSocket has reported why */
        pool->sockets[pool->count++] = hSock;
    }
    pool->numFresh = pool->count;
}

/* The notes' Alloc: a free socket, or a new one when none is left. A socket that Free put back
 * (above the fresh ones on the stack) is a reuse: no WSASocket, no association. */
static SOCKET SocketPoolAlloc(SOCKET_POOL *pool)
{
    SOCKET hSock = INVALID_SOCKET;

    AcquireSRWLockExclusive(&pool->lock);
    if (pool->count > 0) {
        hSock = pool->sockets[--pool->count];
        if (pool->count >= pool->numFresh)
            pool->numReuses++;
        else
            pool->numFresh--;
    }
    ReleaseSRWLockExclusive(&pool->lock);
    if (hSock == INVALID_SOCKET)
        hSock = CreatePoolSocket(pool);
    return hSock;
}

/* The notes' Free: a socket disconnected for reuse goes back, for the next AcceptEx. No more
 * sockets live than sessions, so it always fits; were it full, the socket would be closed. */
static void SocketPoolFree(SOCKET_POOL *pool, SOCKET hSock)
{
    BOOL full;

    AcquireSRWLockExclusive(&pool->lock);
    full = pool->count == pool->size;
    if (!full)
        pool->sockets[pool->count++] = hSock;
    ReleaseSRWLockExclusive(&pool->lock);
    if (full)
        closesocket(hSock);
}

/* At the stop, when nothing else runs: closes every free socket, each exactly once. */
static void SocketPoolClose(SOCKET_POOL *pool)
{
    while (pool->count > 0)
        closesocket(pool->sockets[--pool->count]);
    free(pool->sockets);
}

/* Before every post: a zeroed OVERLAPPED (the system keeps its state there while the I/O is
 * pending). The port hands back its address, so it needs no event and no hEvent trick. */
static void ResetOverlapped(PER_IO_DATA *ioData)
{
    memset(&ioData->overlapped, 0, sizeof(ioData->overlapped));
}

/* A session leaves use for good: at the stop, or when it cannot accept any more. The caller
 * holds the server's lock. */
static void ParkSession(SERVER *server)
{
    if (--server->numSessions == 0)
        SetEvent(server->hNoSessions);
}

/* Gives the session a pool socket and posts an AcceptEx with it. Receive length 0: it completes
 * when a client connects, not when it first sends. Returns 0 once posted (done at once or pending,
 * the completion is queued to the port), else the error of a failure at once: then no completion
 * will come, and the socket is closed again. */
static int TryAcceptEx(SESSION *session)
{
    SERVER *server = session->server;
    PER_IO_DATA *ioData = &session->ioData;
    DWORD bytes = 0;
    int err;

    session->hClntSock = SocketPoolAlloc(&server->pool);
    if (session->hClntSock == INVALID_SOCKET)
        return WSAGetLastError(); /* reported by the pool */
    ResetOverlapped(ioData);
    ioData->rwMode = IO_ACCEPT;
    InterlockedIncrement(&session->ioCount);
    if (server->pfnAcceptEx(server->hServSock, session->hClntSock, ioData->buf, 0,
                            ADDR_SLOT, ADDR_SLOT, &bytes, &ioData->overlapped))
        return 0;
    err = WSAGetLastError();
    if (err == ERROR_IO_PENDING)
        return 0;
    ReportError("AcceptEx()", err); /* e.g. 10054: a client reset while it waited in the backlog */
    InterlockedDecrement(&session->ioCount);
    closesocket(session->hClntSock);
    return err;
}

/* Puts a free session back to accepting. Under the server's lock, which the stop takes to cancel
 * the accepts: an AcceptEx is posted before the stop (and cancelled by it) or not at all. A reset
 * connection concerns that connection only: try again with another socket. Any other failure at
 * once takes the session out of the pool (it is logged above); the others go on accepting. */
static void PostAccept(SESSION *session)
{
    SERVER *server = session->server;
    int tries, err = 0;

    EnterCriticalSection(&server->lock);
    for (tries = 0; tries < ACCEPT_TRIES && !server->stopping; tries++) {
        err = TryAcceptEx(session);
        if (err != WSAECONNRESET)
            break;
    }
    if (server->stopping || err != 0)
        ParkSession(server);
    LeaveCriticalSection(&server->lock);
}

/* Posts a receive into the whole buffer. Done at once or pending, its completion is queued to the
 * port, for any worker; only a failure at once (no completion will come) returns FALSE. The
 * caller holds the session's lock. */
static BOOL PostRecv(SESSION *session)
{
    PER_IO_DATA *ioData = &session->ioData;

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
            if (err != WSAESHUTDOWN) /* 10058: the stop has shut it down; not worth a line */
                ReportError("WSARecv()", err); /* e.g. 10054: the client reset */
            InterlockedDecrement(&session->ioCount); /* here, and only here: nothing completes */
            CancelIoEx((HANDLE)session->hClntSock, NULL); /* the pending send, if any, ends too */
            return FALSE;
        }
    }
    return TRUE;
}

/* Posts a send of what is not sent yet of msg, the head of the queue. Same rules as PostRecv. */
static BOOL PostSend(SESSION *session, PER_IO_DATA *msg)
{
    ResetOverlapped(msg);
    msg->wsaBuf.buf = msg->buf + msg->sendPos;
    msg->wsaBuf.len = msg->sendLen - msg->sendPos;
    InterlockedIncrement(&session->ioCount);
    if (WSASend(session->hClntSock, &msg->wsaBuf, 1, NULL, 0,
                &msg->overlapped, NULL) == SOCKET_ERROR) {
        int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            if (err != WSAESHUTDOWN) /* 10058: the stop has shut it down; not worth a line */
                ReportError("WSASend()", err); /* under Wine, 10054 at once on a reset client */
            InterlockedDecrement(&session->ioCount);
            CancelIoEx((HANDLE)session->hClntSock, NULL); /* the pending receive, if any, too */
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
        ok = PostSend(session, msg);
    if (ok && session->sendCount < MAX_SEND_QUEUE)
        ok = PostRecv(session);
    else if (ok)
        session->recvPaused = TRUE;
    LeaveCriticalSection(&session->lock);
    return ok;
}

/* An AcceptEx is over: the session serves the new client, or closes it at once when the server
 * is full (or stopping). Either way, once its I/O count falls to 0 it accepts again. */
static BOOL OnAcceptCompleted(SESSION *session)
{
    SERVER *server = session->server;
    SOCKADDR *localAdr, *remoteAdr;
    int localLen = 0, remoteLen = 0;
    SOCKADDR_IN clntAdr;
    BOOL full, ok;

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
    InterlockedIncrement(&server->numAccepted);

    EnterCriticalSection(&server->lock); /* connected before the stop's pass, or not at all */
    full = server->numClients == MAX_CLIENTS;
    ok = !full && !server->stopping;
    if (ok) {
        server->numClients++;
        session->connected = TRUE;
    }
    LeaveCriticalSection(&server->lock);
    if (!ok) {
        if (full)
            LogLine("Too many clients (%d): closed %s", MAX_CLIENTS, session->peer);
        InterlockedIncrement(&server->numClosed);
        return FALSE; /* no post: CloseSession closes it and accepts again */
    }
    LogLine("Connected client %s", session->peer);
    /* No CreateIoCompletionPort here: the socket has been on the port since the pool made it
       (a reused one would fail with 87 and keep its first key). Then the first receive. */
    EnterCriticalSection(&session->lock);
    ok = PostRecv(session);
    LeaveCriticalSection(&session->lock);
    return ok;
}

/* A receive is over: queue what came, or post nothing on 0 bytes (the client closed or
 * half-closed): what is queued is still sent, then the count falls to 0 and the session closes,
 * its socket disconnected for reuse: the client closed first. */
static BOOL OnRecvCompleted(SESSION *session, DWORD bytes)
{
    if (bytes == 0) {
        session->clientClosed = TRUE;
        return FALSE;
    }
    return SendMsg(session, session->ioData.buf, bytes);
}

/* A send is over: a short send posts the rest; else the message leaves the queue, the next one
 * is sent, and a receive held back by a full queue is posted now. */
static BOOL OnSendCompleted(SESSION *session, PER_IO_DATA *msg, DWORD bytes)
{
    BOOL ok = TRUE;

    InterlockedExchangeAdd64(&session->server->bytesEchoed, bytes);
    EnterCriticalSection(&session->lock);
    msg->sendPos += bytes;
    if (msg->sendPos < msg->sendLen) {
        ok = PostSend(session, msg);
    } else {
        session->sendHead = msg->next;
        if (session->sendHead == NULL)
            session->sendTail = NULL;
        session->sendCount--;
        free(msg);
        if (session->sendHead != NULL)
            ok = PostSend(session, session->sendHead);
        if (ok && session->recvPaused) {
            session->recvPaused = FALSE;
            ok = PostRecv(session);
        }
    }
    LeaveCriticalSection(&session->lock);
    return ok;
}

/* Disconnects the session's socket for reuse, overlapped: DisconnectEx with TF_REUSE_SOCKET, or
 * TransmitFile with nothing to send and TF_DISCONNECT | TF_REUSE_SOCKET. Called with the count at
 * 0: every byte echoed, no I/O pending. Under the server's lock, like PostAccept: posted before
 * the stop (which cancels it) or not at all. Both TRUE (done at once) and FALSE with
 * ERROR_IO_PENDING mean that a completion packet comes: the socket is on a port, and without
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS (SetFileCompletionNotificationModes) a request that
 * succeeds at once is queued to the port like one that pends. Another error: none comes, and
 * FALSE tells the caller to close the socket. */
static BOOL PostDisconnect(SESSION *session)
{
    SERVER *server = session->server;
    PER_IO_DATA *ioData = &session->ioData;
    BOOL posted = FALSE;

    EnterCriticalSection(&server->lock);
    if (!server->stopping) {
        ResetOverlapped(ioData);
        ioData->rwMode = IO_DISCONNECT;
        session->disconnecting = TRUE;
        InterlockedIncrement(&session->ioCount);
        if (server->useDisconnectEx)
            posted = server->pfnDisconnectEx(session->hClntSock, &ioData->overlapped,
                                             TF_REUSE_SOCKET, 0);
        else
            posted = server->pfnTransmitFile(session->hClntSock, NULL, 0, 0, &ioData->overlapped,
                                             NULL, TF_DISCONNECT | TF_REUSE_SOCKET);
        if (!posted) {
            int err = WSAGetLastError();
            posted = err == ERROR_IO_PENDING;
            if (!posted) {
                if (err != WSAENOTCONN) /* 10057: a reset client, nothing left to disconnect */
                    ReportError(server->disconnectName, err);
                InterlockedDecrement(&session->ioCount); /* no completion will come */
                session->disconnecting = FALSE;
            }
        }
    }
    LeaveCriticalSection(&server->lock);
    return posted;
}

/* The disconnect is over. AcceptEx takes only a socket that is not connected (Microsoft's AcceptEx
 * page), and SO_CONNECT_TIME tells: for a socket that is not, the value 0xFFFFFFFF says the
 * AcceptEx page, the error WSAENOTCONN the getsockopt page. On Windows the disconnect leaves it
 * so, and it goes back to the pool. Wine 8 ignores TransmitFile's flags (the client's FIN would
 * wait until a later AcceptEx put a new connection into the socket) and only shuts down the
 * sending side in DisconnectEx: such a socket is closed, and the pool makes a new one. */
static void OnDisconnectCompleted(SESSION *session)
{
    SERVER *server = session->server;
    DWORD seconds = 0;
    int len = sizeof(seconds);
    BOOL notConnected;

    EnterCriticalSection(&server->lock); /* not disconnecting first: the stop no longer cancels */
    session->disconnecting = FALSE;
    LeaveCriticalSection(&server->lock);
    if (getsockopt(session->hClntSock, SOL_SOCKET, SO_CONNECT_TIME, (char *)&seconds, &len) == 0)
        notConnected = seconds == 0xFFFFFFFF;
    else
        notConnected = WSAGetLastError() == WSAENOTCONN;
    if (notConnected)
        SocketPoolFree(&server->pool, session->hClntSock);
    else
        closesocket(session->hClntSock); /* still connected (Wine), or unknown: not reusable */
    session->hClntSock = INVALID_SOCKET;
}

/* Called only when no I/O is pending, so nothing writes into the session any more. Drops what is
 * still queued; then the socket is disconnected for reuse (the completion brings the session back
 * here without it) or closed, and the session accepts again. */
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
    session->disconnecting = FALSE; /* after a failed disconnect */
    LeaveCriticalSection(&server->lock);

    while (session->sendHead != NULL) { /* left by a failed send */
        PER_IO_DATA *msg = session->sendHead;
        session->sendHead = msg->next;
        free(msg);
    }
    session->sendTail = NULL;
    session->sendCount = 0;
    session->recvPaused = FALSE;
    if (wasConnected) {
        InterlockedIncrement(&server->numClosed);
        LogLine("Closed client %s", session->peer);
    }
    /* Reuse only what the client closed first: then TIME_WAIT stays on the client's side and the
       disconnect ends at once. Closing first here (over the limit, an error) would leave it on
       ours, and Microsoft's DisconnectEx page warns that TIME_WAIT may delay the disconnect. */
    if (session->clientClosed) {
        session->clientClosed = FALSE;
        if (PostDisconnect(session))
            return; /* OnDisconnectCompleted takes the socket, then the count is 0 again */
    }
    if (session->hClntSock != INVALID_SOCKET) /* not reusable, or the disconnect failed */
        closesocket(session->hClntSock);
    session->hClntSock = INVALID_SOCKET;
    PostAccept(session); /* after every use, failed accepts included: else the pool shrinks */
}

/* Lowers the I/O count at a completion. Whoever takes it to 0 saw the last one: closes. */
static void ReleaseSession(SESSION *session)
{
    if (InterlockedDecrement(&session->ioCount) == 0)
        CloseSession(session);
}

/* A worker: takes completions off the port, for any client, until the stop's sentinel. The
 * OVERLAPPED points into a PER_IO_DATA, which names its session. */
static DWORD WINAPI WorkerThreadMain(LPVOID param)
{
    HANDLE hComPort = (HANDLE)param;

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
        /* Not from the key: an AcceptEx completion carries the listening socket's key (and a
           reused socket's completions would carry the key of its first association). */
        ioData = CONTAINING_RECORD(overlapped, PER_IO_DATA, overlapped);
        session = ioData->session;
        if (!ok) {
            /* That I/O failed; key and OVERLAPPED are valid. A Win32 code: 64 (the client reset),
               1236 (aborted), 995 (cancelled by the stop: not worth a line). Post nothing, and
               cancel the session's other I/O: it closes once both are over. */
            DWORD err = GetLastError();
            if (err != ERROR_OPERATION_ABORTED)
                ReportError(ioData->rwMode == IO_ACCEPT ? "AcceptEx()" :
                            ioData->rwMode == IO_DISCONNECT ? session->server->disconnectName :
                            ioData->rwMode == IO_SEND ? "WSASend()" : "WSARecv()", err);
            if (ioData->rwMode != IO_ACCEPT)
                CancelIoEx((HANDLE)session->hClntSock, NULL);
        } else if (ioData->rwMode == IO_ACCEPT) {
            OnAcceptCompleted(session);
        } else if (ioData->rwMode == IO_DISCONNECT) {
            OnDisconnectCompleted(session);
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

/* AcceptEx, GetAcceptExSockaddrs, TransmitFile and DisconnectEx are Microsoft extensions: their
 * addresses are asked of the socket's provider at run time, as Microsoft's documentation
 * requires. */
static void LoadExtension(SOCKET hSock, GUID guid, void *function, DWORD size)
{
    DWORD bytes = 0;

    if (WSAIoctl(hSock, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), function, size,
                 &bytes, NULL, NULL) == SOCKET_ERROR)
        ErrorHandling("WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)");
}

/* The port, the listening socket on it, both pools and the workers. Concurrency 0: the port lets
 * as many workers run at once as there are processors. One worker per processor, the notes' rule:
 * when one blocks (here only in printf), the port may wake another; 2 x processors is the other
 * usual rule. Only a measurement settles it (see the README). */
static void StartServer(SERVER *server, SOCKET hServSock, BOOL useDisconnectEx)
{
    GUID acceptExId = WSAID_ACCEPTEX, sockaddrsId = WSAID_GETACCEPTEXSOCKADDRS;
    GUID transmitFileId = WSAID_TRANSMITFILE, disconnectExId = WSAID_DISCONNECTEX;
    SYSTEM_INFO sysInfo;
    DWORD i;

    memset(server, 0, sizeof(*server));
    server->hServSock = hServSock;
    InitializeCriticalSection(&server->lock);
    server->hNoSessions = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (server->hNoSessions == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    server->hComPort = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (server->hComPort == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());
    LoadExtension(hServSock, acceptExId, &server->pfnAcceptEx, sizeof(server->pfnAcceptEx));
    LoadExtension(hServSock, sockaddrsId, &server->pfnGetAcceptExSockaddrs,
                  sizeof(server->pfnGetAcceptExSockaddrs));
    LoadExtension(hServSock, transmitFileId, &server->pfnTransmitFile,
                  sizeof(server->pfnTransmitFile));
    LoadExtension(hServSock, disconnectExId, &server->pfnDisconnectEx,
                  sizeof(server->pfnDisconnectEx));
    server->useDisconnectEx = useDisconnectEx;
    server->disconnectName = useDisconnectEx ? "DisconnectEx()" : "TransmitFile()";
    /* The AcceptEx completions come to the port too; key 0, not used. */
    if (CreateIoCompletionPort((HANDLE)hServSock, server->hComPort, 0, 0) == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());
    SocketPoolInit(&server->pool, POOL_SIZE, server->hComPort); /* a socket for every session */

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

/* The graceful stop: stop accepting, end every session's I/O, wait until none is outstanding,
 * then stop the workers, join them and free everything. */
static void StopServer(SERVER *server)
{
    DWORD i;

    /* here, not in CtrlHandler: then it can never follow the Shutdown line */
    LogLine("Stopping (Ctrl+C again ends the process at once)");

    /* Under the lock PostAccept holds: no AcceptEx is posted after this, and CancelIoEx on the
       listening socket ends the pending ones (995). The listening socket is closed only at the
       end: closed now, its handle value could come back as the new socket a worker passes to
       AcceptEx, which Wine then leaves pending forever (measured). The connected sessions: cancel
       rather than closesocket, as in 05; and the pending disconnects (under the same lock, none is
       posted after this; a TCP disconnect may wait for TIME_WAIT). */
    EnterCriticalSection(&server->lock);
    server->stopping = TRUE;
    CancelIoEx((HANDLE)server->hServSock, NULL);
    for (i = 0; i < POOL_SIZE; i++) {
        if (server->sessions[i].connected) {
            shutdown(server->sessions[i].hClntSock, SD_BOTH);
            CancelIoEx((HANDLE)server->sessions[i].hClntSock, NULL);
        } else if (server->sessions[i].disconnecting) {
            CancelIoEx((HANDLE)server->sessions[i].hClntSock, NULL);
        }
    }
    LeaveCriticalSection(&server->lock);
    if (WaitForSingleObject(server->hNoSessions, INFINITE) != WAIT_OBJECT_0)
        ErrorHandlingCode("WaitForSingleObject()", GetLastError());

    /* No I/O is outstanding: the port's queue holds nothing else. One sentinel per worker. */
    for (i = 0; i < server->numWorkers; i++)
        if (!PostQueuedCompletionStatus(server->hComPort, 0, 0, NULL))
            ErrorHandlingCode("PostQueuedCompletionStatus()", GetLastError());
    if (WaitForMultipleObjects(server->numWorkers, server->hWorkers, TRUE, INFINITE) == WAIT_FAILED)
        ErrorHandlingCode("WaitForMultipleObjects()", GetLastError());
    for (i = 0; i < server->numWorkers; i++)
        CloseHandle(server->hWorkers[i]);
    SocketPoolClose(&server->pool); /* every session has closed its socket or given it back */
    closesocket(server->hServSock);
    for (i = 0; i < POOL_SIZE; i++)
        DeleteCriticalSection(&server->sessions[i].lock);
    free(server->sessions);
    CloseHandle(server->hComPort);
    CloseHandle(server->hNoSessions);
    DeleteCriticalSection(&server->lock);
}

/* An AcceptEx for every session of the pool; then the workers do everything and the main thread
 * waits for Ctrl+C. Returns once the server has stopped, with the last line. */
static void ServeClients(SOCKET hServSock, BOOL useDisconnectEx)
{
    SERVER server;
    int i;

    StartServer(&server, hServSock, useDisconnectEx);
    for (i = 0; i < POOL_SIZE; i++)
        PostAccept(&server.sessions[i]);
    g_hStopEvent = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (g_hStopEvent == NULL)
        ErrorHandlingCode("CreateEvent()", GetLastError());
    if (InterlockedCompareExchange(&g_state, SERVING, STARTING) == STARTING) {
        if (WaitForSingleObject(g_hStopEvent, INFINITE) != WAIT_OBJECT_0)
            ErrorHandlingCode("WaitForSingleObject()", GetLastError());
    }
    CloseHandle(g_hStopEvent);
    StopServer(&server);
    LogLine("Socket pool: %ld sockets created, %ld reuses", server.pool.numCreated,
            server.pool.numReuses);
    LogLine("Shutdown: %ld accepted, %ld closed, %lld bytes echoed",
            server.numAccepted, server.numClosed, (long long)server.bytesEchoed);
}

int main(int argc, char *argv[])
{
    WSADATA wsaData;
    SOCKET hServSock;
    BOOL useDisconnectEx;
    unsigned short port = ParsePort(argc, argv, &useDisconnectEx);
    int err;

    err = WSAStartup(MAKEWORD(2, 2), &wsaData);
    if (err != 0)
        ErrorHandlingCode("WSAStartup()", (DWORD)err);
    if (!SetConsoleCtrlHandler(CtrlHandler, TRUE))
        ErrorHandlingCode("SetConsoleCtrlHandler()", GetLastError());
    QuickEditOff(); /* a selection in the console would stop the server's next log line */

    hServSock = OpenListenSocket(port);
    ServeClients(hServSock, useDisconnectEx); /* StopServer has closed hServSock */

    WSACleanup();
    return 0;
}
