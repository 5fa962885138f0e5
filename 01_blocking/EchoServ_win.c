/*
 * 01_blocking/EchoServ_win.c - an iterative blocking echo server.
 *
 * Stage 1 of 7: blocking sockets, one client at a time.
 *
 * What this stage teaches:
 * The simplest server there is: socket, bind, listen, then accept ONE client and echo until it
 * closes, then accept the next.
 * Every call blocks the only thread, so a second client waits in the listen backlog until the first
 * one leaves; that is the limit the next stages remove.
 *
 * Changed from the previous stage:
 * Nothing: this is the first stage.
 *
 * What the book / notes do, and what we do instead:
 * The book's listings call listen(s, 5): here SOMAXCONN, so a burst of clients is not refused.
 * The book's StableEchoClnt_win.c never checks recv() for 0 or SOCKET_ERROR: our client (the same
 * in every stage) checks every call.
 *
 * Handled here:
 *   - a 0-byte read (the client closed) or an error (a reset) ends that client only.
 *   - a failed accept concerns one connection (e.g. it was reset while waiting): log, go on.
 *   - payloads are bytes, never strings: no str* function touches them.
 *   - send() may take fewer bytes than asked: SendAll loops until every byte is out.
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

    hServSock = socket(PF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (hServSock == INVALID_SOCKET)
        ErrorHandling("socket()");

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

/* send() may take fewer bytes than asked (a "short send"): loop until every byte is out. */
static BOOL SendAll(SOCKET hSock, const char *buf, int len)
{
    while (len > 0) {
        int sent = send(hSock, buf, len, 0);
        if (sent == SOCKET_ERROR) {
            ReportError("send()", WSAGetLastError());
            return FALSE;
        }
        buf += sent;
        len -= sent;
    }
    return TRUE;
}

/* Echoes one client until it closes or fails. The thread is blocked in here the whole time. */
static void EchoClient(SOCKET hClntSock)
{
    char buf[BUF_SIZE];

    for (;;) {
        int strLen = recv(hClntSock, buf, BUF_SIZE, 0);
        if (strLen == 0)
            return; /* the client closed (or half-closed): every byte it sent is back already */
        if (strLen == SOCKET_ERROR) {
            ReportError("recv()", WSAGetLastError()); /* e.g. 10054: the client reset */
            return;
        }
        Trace(TRACE_RECV, hClntSock, (unsigned long)strLen);
        if (!SendAll(hClntSock, buf, strLen))
            return;
        Trace(TRACE_SENT, hClntSock, (unsigned long)strLen);
    }
}

/* Accepts one client at a time and echoes it until it leaves. Never returns. */
NO_RETURN static void ServeClients(SOCKET hServSock)
{
    for (;;) {
        SOCKET hClntSock;
        SOCKADDR_IN clntAdr;
        int adrSz = sizeof(clntAdr);
        char peer[64];

        hClntSock = accept(hServSock, (SOCKADDR *)&clntAdr, &adrSz);
        if (hClntSock == INVALID_SOCKET) {
            int err = WSAGetLastError();
            ReportError("accept()", err);
            /* A connection reset in the backlog (10054; 10057 under Wine) concerns that one: go on.
               Anything else (out of sockets or memory) would fail again at once: wait, not spin. */
            if (err != WSAECONNRESET && err != WSAENOTCONN)
                Sleep(ACCEPT_BACKOFF_MS);
            continue;
        }
        FormatAddress(&clntAdr, peer, sizeof(peer));
        Trace(TRACE_ACCEPTED, hClntSock, 0);
        LogLine("Connected client %s", peer);

        EchoClient(hClntSock);

        Trace(TRACE_CLOSED, hClntSock, 0);
        closesocket(hClntSock);
        LogLine("Closed client %s", peer);
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
