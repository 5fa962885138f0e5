/*
 * StableEchoClnt_win.c - the echo client that waits for every byte it sent.
 *
 * TCP is a byte stream, not a message service: one send() may come back in several recv()s. So
 * after sending a line the client calls recv() until exactly as many bytes as it sent are back.
 * The book's version of this loop,
 *     readLen += recv(hSocket, &message[readLen], BUF_SIZE - 1, 0);
 * never checks for 0 (the server closed) or SOCKET_ERROR (-1, added to readLen!), asks for more
 * than is left, and never checks send(). Here every call is checked, recv asks only for what is
 * still missing, and a line may be any length and hold any byte.
 *
 * A long line goes out in chunks of CHUNK_SIZE bytes, and each chunk's echo is received before the
 * next chunk is sent. Sending the whole line first deadlocks once the line is longer than all the
 * buffering between client and server: the server blocks sending its echo back to a client that
 * is not reading, stops reading, and the client blocks in send() for ever.
 *
 * Input and output: when stdin or stdout is not a console (a pipe, a file), it is switched to
 * binary mode, so every byte goes through as it is; in text mode the C library would end the
 * input at a 0x1A byte and turn CR LF into LF. At a console, the console's line editing applies
 * (Enter ends a line, Ctrl+Z then Enter ends the input).
 *
 * The same client is used, unchanged, by every stage of the tutorial.
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -o StableEchoClnt_win.exe StableEchoClnt_win.c -lws2_32
 * Run:   StableEchoClnt_win.exe <IP> <port>
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
#include <limits.h>
#include <io.h>
#include <fcntl.h>
#include "../common/ErrorHandling.h"

#define BUF_SIZE 8192
#define CHUNK_SIZE 8192 /* bytes sent before their echo is read: far below any path's buffering */

/* Reads one line from stdin, its '\n' included, into *line (grown as needed).
 * Returns the line's length, 0 at the end of input. Binary-safe: no str* function. */
static size_t ReadLine(char **line, size_t *capacity)
{
    size_t len = 0;
    int c;

    while ((c = getchar()) != EOF) {
        if (len == *capacity) {
            char *bigger = realloc(*line, *capacity * 2);
            if (bigger == NULL) {
                fprintf(stderr, "Out of memory for a line of %lu bytes\n", (unsigned long)len);
                exit(1);
            }
            *line = bigger;
            *capacity *= 2;
        }
        (*line)[len++] = (char)c;
        if (c == '\n')
            break;
    }
    return len;
}

/* "Q" or "q", alone on its line (LF or CR LF: binary input keeps the CR). */
static BOOL IsQuit(const char *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\n')
        len--;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    return len == 1 && (line[0] == 'Q' || line[0] == 'q');
}

/* Reads the port argument: 1 to 65535, digits only; anything else prints the usage and exits 1.
 * (Passed on unchecked, "abc" fails in getaddrinfo with 10109 and "70000" wraps to 4464.) */
static void CheckPort(const char *program, const char *port)
{
    size_t i, len = strlen(port);
    long value = 0;

    for (i = 0; i < len; i++) {
        if (port[i] < '0' || port[i] > '9')
            break;
        if (value <= 65535) /* past it, it is too big already: stop growing */
            value = value * 10 + (port[i] - '0');
    }
    if (len == 0 || i != len || value < 1 || value > 65535) {
        fprintf(stderr, "Usage: %s <IP> <port>   (port 1 to 65535)\n", program);
        exit(1);
    }
}

/* Binary mode for a stdin or stdout that is not a console (see the header comment). */
static void KeepEveryByte(void)
{
    if (!_isatty(_fileno(stdin)) && _setmode(_fileno(stdin), _O_BINARY) == -1)
        perror("_setmode(stdin)");
    if (!_isatty(_fileno(stdout)) && _setmode(_fileno(stdout), _O_BINARY) == -1)
        perror("_setmode(stdout)");
}

/* Connects to ip:port (a name such as "localhost" works too); exits 1 with the reason if it can't. */
static SOCKET ConnectToServer(const char *ip, const char *port)
{
    ADDRINFOA hints, *result, *ai;
    int err;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    err = getaddrinfo(ip, port, &hints, &result);
    if (err != 0)
        ErrorHandlingCode("getaddrinfo()", (DWORD)err);

    for (ai = result; ai != NULL; ai = ai->ai_next) {
        SOCKET hSocket = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (hSocket == INVALID_SOCKET)
            ErrorHandling("socket()");
        if (connect(hSocket, ai->ai_addr, (int)ai->ai_addrlen) == 0) {
            freeaddrinfo(result);
            return hSocket;
        }
        err = WSAGetLastError(); /* e.g. 10061: nobody listens on that port */
        closesocket(hSocket);
    }
    freeaddrinfo(result);
    ErrorHandlingCode("connect()", (DWORD)err);
}

/* send() may take fewer bytes than asked: loop until every byte is out. */
static void SendAll(SOCKET hSocket, const char *buf, size_t len)
{
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        int sent = send(hSocket, buf, chunk, 0);
        if (sent == SOCKET_ERROR)
            ErrorHandling("send()");
        buf += sent;
        len -= (size_t)sent;
    }
}

/* Receives until len bytes are back, asking only for what is still missing. Returns how many came:
 * fewer than len only when the server closed the connection first (recv() returned 0, no error).
 * An error ends the client. */
static size_t RecvExactly(SOCKET hSocket, char *buf, size_t len)
{
    size_t readLen = 0;

    while (readLen < len) {
        size_t missing = len - readLen;
        int chunk = missing > INT_MAX ? INT_MAX : (int)missing;
        int strLen = recv(hSocket, buf + readLen, chunk, 0);
        if (strLen == 0) /* the server closed before echoing everything */
            break;
        if (strLen == SOCKET_ERROR)
            ErrorHandling("recv()"); /* e.g. 10054: the server reset the connection */
        readLen += (size_t)strLen;
    }
    return readLen;
}

/* Sends the line chunk by chunk, receiving each chunk's echo (into the same place) before the next
 * chunk goes out: at most CHUNK_SIZE bytes are ever on their way, so neither side can block for
 * good, whatever the line's length (see the header comment). */
static void EchoLine(SOCKET hSocket, char *line, size_t len)
{
    size_t done = 0;

    while (done < len) {
        size_t chunk = len - done < CHUNK_SIZE ? len - done : CHUNK_SIZE;
        size_t got;

        SendAll(hSocket, line + done, chunk);
        got = RecvExactly(hSocket, line + done, chunk);
        if (got < chunk) { /* a clean close, not an error: there is no Windows error text to show */
            fprintf(stderr, "Server closed the connection: %llu of %llu bytes of the line "
                    "came back\n", (unsigned long long)(done + got), (unsigned long long)len);
            exit(1);
        }
        done += chunk;
    }
}

int main(int argc, char *argv[])
{
    WSADATA wsaData;
    SOCKET hSocket;
    size_t capacity = BUF_SIZE, len;
    char *message;
    int err;

    if (argc != 3) {
        fprintf(stderr, "Usage: %s <IP> <port>   (port 1 to 65535)\n", argv[0]);
        exit(1);
    }
    CheckPort(argv[0], argv[2]);
    KeepEveryByte();
    err = WSAStartup(MAKEWORD(2, 2), &wsaData);
    if (err != 0)
        ErrorHandlingCode("WSAStartup()", (DWORD)err);
    message = malloc(capacity);
    if (message == NULL) {
        fprintf(stderr, "Out of memory\n");
        exit(1);
    }

    hSocket = ConnectToServer(argv[1], argv[2]);

    for (;;) {
        fputs("Input message(Q to quit): ", stdout);
        fflush(stdout);
        len = ReadLine(&message, &capacity);
        if (len == 0 || IsQuit(message, len))
            break;

        EchoLine(hSocket, message, len);

        fputs("Message from server: ", stdout);
        fwrite(message, 1, len, stdout);
        if (message[len - 1] != '\n') /* the last line of the input had no newline */
            putchar('\n');
        fflush(stdout);
    }

    free(message);
    closesocket(hSocket);
    WSACleanup();
    return 0;
}
