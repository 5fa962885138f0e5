/*
 * appendix_epoll/StableEchoClnt.c - the stages' StableEchoClnt_win.c, on POSIX sockets.
 *
 * The same client, line for line, with Winsock's names replaced by POSIX ones (SOCKET -> int,
 * closesocket -> close, WSAGetLastError -> errno, no WSAStartup): it waits for every byte it sent.
 * TCP is a byte stream, not a message service: one send() may come back in several recv()s, so
 * after sending a line it calls recv() until exactly as many bytes as it sent are back, asking
 * only for what is still missing, and treats 0 (the server closed) and -1 as the end.
 *
 * A long line goes out in chunks of CHUNK_SIZE bytes, and each chunk's echo is received before the
 * next chunk is sent. Sending the whole line first deadlocks once the line is longer than all the
 * buffering between client and server: the server blocks sending its echo back to a client that
 * is not reading, stops reading, and the client blocks in send() for ever.
 *
 * Input and output: POSIX stdio is binary already (no text mode, no 0x1A, no CR LF -> LF), so
 * the Windows client's KeepEveryByte has nothing to do here; "Q\r\n" still quits, as there.
 *
 * Build: cc -std=c11 -pedantic -Wall -Wextra -Wvla -O2 -o StableEchoClnt StableEchoClnt.c
 * Run:   ./StableEchoClnt <IP> <port>
 */
#define _POSIX_C_SOURCE 200809L /* getaddrinfo */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netdb.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF_SIZE 8192
#define CHUNK_SIZE 8192 /* bytes sent before their echo is read: far below any path's buffering */

/* A failure the client cannot go on after: the call, errno's text, exit code 1. */
static void ErrorHandlingCode(const char *funcName, int code, const char *text)
{
    fprintf(stderr, "%s failed: error %d: %s\n", funcName, code, text);
    exit(1);
}

static void ErrorHandling(const char *funcName)
{
    int code = errno;
    ErrorHandlingCode(funcName, code, strerror(code));
}

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
static bool IsQuit(const char *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\n')
        len--;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    return len == 1 && (line[0] == 'Q' || line[0] == 'q');
}

/* Reads the port argument: 1 to 65535, digits only; anything else prints the usage and exits 1.
 * (Passed on unchecked, "abc" fails in getaddrinfo with "Servname not supported".) */
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

/* Connects to ip:port (a name such as "localhost" works too); exits 1 with the reason if it can't. */
static int ConnectToServer(const char *ip, const char *port)
{
    struct addrinfo hints, *result, *ai;
    int err = 0;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    err = getaddrinfo(ip, port, &hints, &result);
    if (err != 0)
        ErrorHandlingCode("getaddrinfo()", err, gai_strerror(err));

    for (ai = result; ai != NULL; ai = ai->ai_next) {
        int hSocket = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (hSocket < 0)
            ErrorHandling("socket()");
        if (connect(hSocket, ai->ai_addr, ai->ai_addrlen) == 0) {
            freeaddrinfo(result);
            return hSocket;
        }
        err = errno; /* e.g. ECONNREFUSED: nobody listens on that port */
        close(hSocket);
    }
    freeaddrinfo(result);
    ErrorHandlingCode("connect()", err, strerror(err));
    return -1; /* not reached */
}

/* send() may take fewer bytes than asked: loop until every byte is out. MSG_NOSIGNAL: a server
 * that has reset the connection is an EPIPE error here, not a SIGPIPE that kills the client. */
static void SendAll(int hSocket, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t sent = send(hSocket, buf, len, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            ErrorHandling("send()");
        }
        buf += sent;
        len -= (size_t)sent;
    }
}

/* Receives until len bytes are back, asking only for what is still missing. Returns how many came:
 * fewer than len only when the server closed the connection first (recv() returned 0, no error).
 * An error ends the client. */
static size_t RecvExactly(int hSocket, char *buf, size_t len)
{
    size_t readLen = 0;

    while (readLen < len) {
        ssize_t strLen = recv(hSocket, buf + readLen, len - readLen, 0);
        if (strLen == 0) /* the server closed before echoing everything */
            break;
        if (strLen < 0) {
            if (errno == EINTR)
                continue;
            ErrorHandling("recv()"); /* e.g. ECONNRESET: the server reset the connection */
        }
        readLen += (size_t)strLen;
    }
    return readLen;
}

/* Sends the line chunk by chunk, receiving each chunk's echo (into the same place) before the next
 * chunk goes out: at most CHUNK_SIZE bytes are ever on their way, so neither side can block for
 * good, whatever the line's length (see the header comment). */
static void EchoLine(int hSocket, char *line, size_t len)
{
    size_t done = 0;

    while (done < len) {
        size_t chunk = len - done < CHUNK_SIZE ? len - done : CHUNK_SIZE;
        size_t got;

        SendAll(hSocket, line + done, chunk);
        got = RecvExactly(hSocket, line + done, chunk);
        if (got < chunk) { /* a clean close, not an error: there is no error text to show */
            fprintf(stderr, "Server closed the connection: %llu of %llu bytes of the line "
                    "came back\n", (unsigned long long)(done + got), (unsigned long long)len);
            exit(1);
        }
        done += chunk;
    }
}

int main(int argc, char *argv[])
{
    int hSocket;
    size_t capacity = BUF_SIZE, len;
    char *message;

    if (argc != 3) {
        fprintf(stderr, "Usage: %s <IP> <port>   (port 1 to 65535)\n", argv[0]);
        exit(1);
    }
    CheckPort(argv[0], argv[2]);
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
    close(hSocket);
    return 0;
}
