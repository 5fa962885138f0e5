/*
 * 07_socket_pool/experiments/key_demo.c - a completion key outlives the session that chose it.
 *
 * EXPERIMENT key_demo (a small standalone program, not a server): what the notes' socket pool did.
 * Their server associated every accepted socket with its completion port, the new session as the
 * key; a socket reused for a second client was associated again with the second session. This
 * program does exactly that with one socket:
 *   1. session A: AcceptEx into the socket, CreateIoCompletionPort(socket, port, key A), a client
 *      sends 8 bytes, the WSARecv completes with key A;
 *   2. the client closes, the socket is disconnected for reuse: TransmitFile(TF_DISCONNECT |
 *      TF_REUSE_SOCKET), as the notes did (Wine 8's DisconnectEx leaves a socket that never
 *      completes a receive again, see the README);
 *   3. session B: AcceptEx into the same socket, CreateIoCompletionPort(socket, port, key B), a
 *      second client sends 8 bytes.
 * Expect: the second CreateIoCompletionPort fails with 87 (ERROR_INVALID_PARAMETER: a handle is
 * associated with one port, under its first key, until it is closed), and session B's receive
 * completes with key A: a server that takes the session from the key runs B's data as A's. The
 * OVERLAPPED still names session B: that is what 07_socket_pool trusts (it associates each socket
 * once, with key 0, and takes the session from CONTAINING_RECORD(overlapped, ...)).
 * Prints the four lines the README quotes, then "overlapped:" and "key:" summary lines; exit 0
 * when it ran to the end, 1 when a step failed. Every wait is bounded (5 s).
 *   make -f Makefile.win experiment STAGE=07_socket_pool NAME=key_demo
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -o key_demo.exe key_demo.c -lws2_32
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
#include <string.h>
#include "../../common/ErrorHandling.h"

#define ADDR_SLOT (sizeof(SOCKADDR_STORAGE) + 16)
#define WAIT_MS 5000

/* What the notes' sessions held: the per-I/O data with its OVERLAPPED, and a name. */
typedef struct {
    WSAOVERLAPPED overlapped;
    WSABUF wsaBuf;
    char buf[64];
    DWORD flags;
    const char *name; /* "A" or "B" */
} SESSION;

static LPFN_ACCEPTEX pfnAcceptEx;
static LPFN_TRANSMITFILE pfnTransmitFile;

static void Load(SOCKET s, GUID guid, void *function, DWORD size)
{
    DWORD bytes = 0;
    if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), function, size,
                 &bytes, NULL, NULL) == SOCKET_ERROR)
        ErrorHandling("WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)");
}

/* AcceptEx into hSock (receive length 0), a client connects, the accept is waited for (the
 * listening socket is on no port: the event says when). Returns the client's socket. */
static SOCKET AcceptOne(SOCKET hListen, SOCKET hSock, unsigned short port)
{
    char addrs[2 * ADDR_SLOT];
    WSAOVERLAPPED ov;
    DWORD bytes = 0, flags = 0;
    SOCKADDR_IN adr;
    SOCKET hClient;

    memset(&ov, 0, sizeof(ov));
    ov.hEvent = WSACreateEvent();
    if (ov.hEvent == WSA_INVALID_EVENT)
        ErrorHandling("WSACreateEvent()");
    if (!pfnAcceptEx(hListen, hSock, addrs, 0, ADDR_SLOT, ADDR_SLOT, &bytes, &ov) &&
        WSAGetLastError() != ERROR_IO_PENDING)
        ErrorHandling("AcceptEx()");
    hClient = socket(PF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (hClient == INVALID_SOCKET)
        ErrorHandling("socket()");
    memset(&adr, 0, sizeof(adr));
    adr.sin_family = AF_INET;
    adr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    adr.sin_port = htons(port);
    if (connect(hClient, (SOCKADDR *)&adr, sizeof(adr)) == SOCKET_ERROR)
        ErrorHandling("connect()");
    if (WaitForSingleObject(ov.hEvent, WAIT_MS) != WAIT_OBJECT_0)
        ErrorHandlingCode("AcceptEx() did not complete within 5 s", WAIT_TIMEOUT);
    if (!WSAGetOverlappedResult(hListen, &ov, &bytes, FALSE, &flags))
        ErrorHandling("AcceptEx() completion");
    if (setsockopt(hSock, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&hListen,
                   sizeof(hListen)) == SOCKET_ERROR)
        ErrorHandling("setsockopt(SO_UPDATE_ACCEPT_CONTEXT)");
    WSACloseEvent(ov.hEvent);
    return hClient;
}

/* The session posts a WSARecv on hSock, the client sends 8 bytes, the completion is taken off the
 * port. Prints whose key it carried and which session its OVERLAPPED belongs to. */
static void ReceiveOnce(HANDLE hPort, SOCKET hSock, SOCKET hClient, SESSION *session,
                        SESSION *sessionA, SESSION *sessionB)
{
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    LPOVERLAPPED overlapped = NULL;
    SESSION *byKey, *byOverlapped;
    char message[9];

    memset(&session->overlapped, 0, sizeof(session->overlapped));
    session->wsaBuf.buf = session->buf;
    session->wsaBuf.len = sizeof(session->buf);
    session->flags = 0;
    if (WSARecv(hSock, &session->wsaBuf, 1, NULL, &session->flags, &session->overlapped,
                NULL) == SOCKET_ERROR && WSAGetLastError() != WSA_IO_PENDING)
        ErrorHandling("WSARecv()");
    snprintf(message, sizeof(message), "hello, %s", session->name);
    if (send(hClient, message, 8, 0) != 8)
        ErrorHandling("send()");
    if (!GetQueuedCompletionStatus(hPort, &bytes, &key, &overlapped, WAIT_MS))
        ErrorHandling("GetQueuedCompletionStatus()");
    byKey = (SESSION *)key;
    byOverlapped = CONTAINING_RECORD(overlapped, SESSION, overlapped);
    LogLine("session %s: its WSARecv completed with key %s (%lu bytes)%s", session->name,
            byKey == sessionA ? "A" : byKey == sessionB ? "B" : "?", (unsigned long)bytes,
            byKey != session ? "  <- another session's key" : "");
    if (session == sessionB) {
        LogLine("key: session %s", byKey == sessionA ? "A" : byKey == sessionB ? "B" : "?");
        LogLine("overlapped: session %s", byOverlapped->name);
    }
}

int main(void)
{
    WSADATA wsaData;
    SOCKET hListen, hSock, hClient;
    SOCKADDR_IN adr;
    int adrSz = sizeof(adr);
    unsigned short port;
    HANDLE hPort;
    SESSION sessionA, sessionB;
    WSAOVERLAPPED tfOv;
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    LPOVERLAPPED overlapped = NULL;
    GUID acceptExId = WSAID_ACCEPTEX, transmitFileId = WSAID_TRANSMITFILE;
    int err = WSAStartup(MAKEWORD(2, 2), &wsaData);

    if (err != 0)
        ErrorHandlingCode("WSAStartup()", (DWORD)err);
    memset(&sessionA, 0, sizeof(sessionA));
    memset(&sessionB, 0, sizeof(sessionB));
    sessionA.name = "A";
    sessionB.name = "B";
    hPort = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    if (hPort == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());

    hListen = socket(PF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (hListen == INVALID_SOCKET)
        ErrorHandling("socket()");
    memset(&adr, 0, sizeof(adr));
    adr.sin_family = AF_INET;
    adr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(hListen, (SOCKADDR *)&adr, sizeof(adr)) == SOCKET_ERROR ||
        listen(hListen, SOMAXCONN) == SOCKET_ERROR ||
        getsockname(hListen, (SOCKADDR *)&adr, &adrSz) == SOCKET_ERROR)
        ErrorHandling("bind/listen/getsockname()");
    port = ntohs(adr.sin_port);
    Load(hListen, acceptExId, &pfnAcceptEx, sizeof(pfnAcceptEx));
    Load(hListen, transmitFileId, &pfnTransmitFile, sizeof(pfnTransmitFile));

    /* 1. session A */
    hSock = WSASocketW(PF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (hSock == INVALID_SOCKET)
        ErrorHandling("WSASocketW()");
    hClient = AcceptOne(hListen, hSock, port);
    if (CreateIoCompletionPort((HANDLE)hSock, hPort, (ULONG_PTR)&sessionA, 0) == NULL)
        ErrorHandlingCode("CreateIoCompletionPort()", GetLastError());
    LogLine("session A: socket %lu associated with key A", (unsigned long)hSock);
    ReceiveOnce(hPort, hSock, hClient, &sessionA, &sessionA, &sessionB);

    /* 2. the client closes first; the socket is disconnected for reuse (completes on the port) */
    closesocket(hClient);
    memset(&tfOv, 0, sizeof(tfOv));
    if (!pfnTransmitFile(hSock, NULL, 0, 0, &tfOv, NULL, TF_DISCONNECT | TF_REUSE_SOCKET) &&
        WSAGetLastError() != ERROR_IO_PENDING)
        ErrorHandling("TransmitFile()");
    if (!GetQueuedCompletionStatus(hPort, &bytes, &key, &overlapped, WAIT_MS))
        ErrorHandling("GetQueuedCompletionStatus() (TransmitFile)");

    /* 3. session B: the same socket, associated again, as the notes' server did */
    hClient = AcceptOne(hListen, hSock, port);
    if (CreateIoCompletionPort((HANDLE)hSock, hPort, (ULONG_PTR)&sessionB, 0) == NULL)
        ReportError("CreateIoCompletionPort()", GetLastError()); /* the lesson: 87, ignored */
    else
        LogLine("session B: socket %lu associated with key B", (unsigned long)hSock);
    ReceiveOnce(hPort, hSock, hClient, &sessionB, &sessionA, &sessionB);

    closesocket(hClient);
    closesocket(hSock);
    closesocket(hListen);
    CloseHandle(hPort);
    WSACleanup();
    return 0;
}
