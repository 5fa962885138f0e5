/*
 * echo_bench.c - a load generator for the tutorial's echo servers.
 *
 * Two modes, both over real TCP connections, every echoed byte checked against what was sent:
 *   echo  (default): N connections, each keeping one message of S bytes in flight for T seconds;
 *                    reports round trips/s, MB/s (both directions) and p50/p99/max latency.
 *   churn (--churn): N connections at a time, each connecting, echoing one message of S bytes and
 *                    closing, again and again for T seconds; reports connections/s.
 * The result is one line of key=value pairs, for people and for bench/run alike.
 *
 * Portable C: POSIX sockets and epoll on Linux (poll() on other POSIX systems), Winsock and
 * WSAPoll() on Windows (Vista+).
 *   Linux:   cc -O2 -std=c11 -Wall -Wextra -o echo_bench echo_bench.c
 *   Windows: gcc -O2 -std=c11 -Wall -Wextra -o echo_bench.exe echo_bench.c -lws2_32
 *            cl /W4 /O2 echo_bench.c ws2_32.lib
 */
#ifdef _WIN32
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
typedef SOCKET sock_t;
typedef WSAPOLLFD pollfd_t;
#else
#define _POSIX_C_SOURCE 200809L
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <time.h>
typedef int sock_t;
typedef struct pollfd pollfd_t;
#define INVALID_SOCKET (-1)
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONNS 10000
#define MAX_SECONDS 600
#define MAX_SIZE (1 << 20)
#define DRAIN_SECONDS 5.0 /* after T, messages still in flight get this long to come back */

/* ---- the few calls that differ between Winsock and POSIX ---- */

static double NowSeconds(void)
{
#ifdef _WIN32
    LARGE_INTEGER freq, now;
    QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (double)now.QuadPart / (double)freq.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
#endif
}

static int LastSocketError(void)
{
#ifdef _WIN32
    return WSAGetLastError();
#else
    return errno;
#endif
}

static int WouldBlock(int err)
{
#ifdef _WIN32
    return err == WSAEWOULDBLOCK;
#else
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
#endif
}

static void CloseSocket(sock_t s)
{
#ifdef _WIN32
    closesocket(s);
#else
    close(s);
#endif
}

static int SetNonBlocking(sock_t s)
{
#ifdef _WIN32
    u_long on = 1;
    return ioctlsocket(s, FIONBIO, &on) == 0;
#else
    int flags = fcntl(s, F_GETFL, 0);
    return flags != -1 && fcntl(s, F_SETFL, flags | O_NONBLOCK) == 0;
#endif
}

/* ---- one connection ---- */

typedef struct {
    sock_t sock;
    unsigned char *msg; /* the message in flight */
    size_t sent, received;
    double started;     /* when its first byte was sent */
    unsigned long seq;
    int watched;        /* the WAIT_ flags the waiter watches this socket for (epoll) */
} CONN;

typedef struct {
    const char *host, *port;
    int conns, size, seconds, churn;
} OPTIONS;

typedef struct {
    unsigned long long roundTrips, connections, bytes;
    unsigned long errors;
    double *latencies; /* seconds, one per round trip */
    size_t numLatencies, capLatencies;
} STATS;

/* A message whose bytes depend on the connection and its sequence number, all 256 values likely. */
static void FillMessage(unsigned char *msg, int size, int conn, unsigned long seq)
{
    unsigned long x = 2463534242UL ^ ((unsigned long)conn * 2654435761UL) ^ (seq * 40503UL);
    int i;
    for (i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x &= 0xffffffffUL;
        msg[i] = (unsigned char)(x >> 11);
    }
}

static sock_t Connect(const OPTIONS *opt)
{
    struct addrinfo hints, *res;
    sock_t s;
    int one = 1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(opt->host, opt->port, &hints, &res) != 0)
        return INVALID_SOCKET;
    s = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (s != INVALID_SOCKET && connect(s, res->ai_addr, (int)res->ai_addrlen) != 0) {
        CloseSocket(s);
        s = INVALID_SOCKET;
    }
    freeaddrinfo(res);
    if (s == INVALID_SOCKET)
        return s;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof(one));
    if (!SetNonBlocking(s)) {
        CloseSocket(s);
        return INVALID_SOCKET;
    }
    return s;
}

static void StartMessage(CONN *c, int index, const OPTIONS *opt)
{
    FillMessage(c->msg, opt->size, index, c->seq++);
    c->sent = c->received = 0;
    c->started = NowSeconds();
}

static void RecordLatency(STATS *st, double seconds)
{
    if (st->numLatencies == st->capLatencies) {
        size_t cap = st->capLatencies ? st->capLatencies * 2 : 65536;
        double *bigger = realloc(st->latencies, cap * sizeof(double));
        if (bigger == NULL)
            return; /* keep counting, stop sampling */
        st->latencies = bigger;
        st->capLatencies = cap;
    }
    st->latencies[st->numLatencies++] = seconds;
}

static void Fail(CONN *c, STATS *st, const char *what, int err)
{
    if (st->errors < 10)
        fprintf(stderr, "echo_bench: connection error: %s (%d)\n", what, err);
    st->errors++;
    CloseSocket(c->sock); /* closing also takes it out of an epoll set */
    c->sock = INVALID_SOCKET;
    c->watched = 0;
}

/* Sends what the socket takes now. */
static void OnWritable(CONN *c, const OPTIONS *opt, STATS *st)
{
    while (c->sent < (size_t)opt->size) {
        int n = send(c->sock, (const char *)c->msg + c->sent, (int)((size_t)opt->size - c->sent), 0);
        if (n < 0) {
            int err = LastSocketError();
            if (!WouldBlock(err))
                Fail(c, st, "send", err);
            return;
        }
        c->sent += (size_t)n;
    }
}

/* Receives and checks; on a whole echo, records it and starts the next message (or connection). */
static void OnReadable(CONN *c, int index, const OPTIONS *opt, STATS *st, int keepGoing)
{
    unsigned char buf[65536];
    size_t missing = (size_t)opt->size - c->received;
    int n = recv(c->sock, (char *)buf, (int)(missing < sizeof(buf) ? missing : sizeof(buf)), 0);

    if (n == 0) {
        Fail(c, st, "the server closed the connection", 0);
        return;
    }
    if (n < 0) {
        int err = LastSocketError();
        if (!WouldBlock(err))
            Fail(c, st, "recv", err);
        return;
    }
    if (memcmp(buf, c->msg + c->received, (size_t)n) != 0) {
        Fail(c, st, "echoed bytes differ from the bytes sent", 0);
        return;
    }
    c->received += (size_t)n;
    if (keepGoing)
        st->bytes += 2 * (unsigned long long)n;
    if (c->received < (size_t)opt->size)
        return;

    if (keepGoing) { /* only what completes within T counts; the drain only checks the rest */
        st->roundTrips++;
        RecordLatency(st, NowSeconds() - c->started);
    }
    if (opt->churn) {
        CloseSocket(c->sock);
        c->watched = 0;
        st->connections += keepGoing ? 1 : 0;
        c->sock = keepGoing ? Connect(opt) : INVALID_SOCKET;
        if (keepGoing && c->sock == INVALID_SOCKET)
            Fail(c, st, "connect", LastSocketError());
    }
    if (!keepGoing && !opt->churn) {
        CloseSocket(c->sock);
        c->watched = 0;
        c->sock = INVALID_SOCKET;
    }
    if (c->sock != INVALID_SOCKET) {
        StartMessage(c, index, opt);
        OnWritable(c, opt, st); /* at once: waiting for poll to say writable costs a whole turn */
    }
}

static int CompareDoubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double Percentile(const STATS *st, double p)
{
    size_t i;
    if (st->numLatencies == 0)
        return 0.0;
    i = (size_t)(p * (double)(st->numLatencies - 1) + 0.5);
    return st->latencies[i] * 1000.0;
}

/* ---- waiting for sockets ----
 * epoll on Linux: the kernel's part of a wait costs in proportion to the sockets that are ready.
 * poll and WSAPoll: in proportion to all of them; at 1,000 connections with a few ready at a time
 * that made the load generator itself the bottleneck (measured against bench/xclient.py). Both
 * still walk every connection in user space each turn, which is cheap. */

#define WAIT_READ 1
#define WAIT_WRITE 2

typedef struct {
    int index, events; /* a connection, and WAIT_ flags */
} READY;

typedef struct {
#ifdef __linux__
    int epfd;
    struct epoll_event *events;
#else
    pollfd_t *fds;
#endif
    READY *ready;
} WAITER;

static int WaiterInit(WAITER *w, int conns)
{
    w->ready = calloc((size_t)conns, sizeof(READY));
#ifdef __linux__
    w->epfd = epoll_create1(0);
    w->events = calloc((size_t)conns, sizeof(struct epoll_event));
    return w->ready != NULL && w->epfd >= 0 && w->events != NULL;
#else
    w->fds = calloc((size_t)conns, sizeof(pollfd_t));
    return w->ready != NULL && w->fds != NULL;
#endif
}

/* Waits until some of the open connections can go on: a connection is watched for reading, and
 * for writing while part of its message is unsent. Fills w->ready; returns how many are ready
 * (0 on the timeout), -1 when no connection is open, -2 on an error. */
static int WaitForSockets(WAITER *w, CONN *conns, int count, size_t size, int timeoutMs)
{
    int i, n, open = 0;
#ifdef __linux__
    for (i = 0; i < count; i++) {
        CONN *c = &conns[i];
        int want = WAIT_READ | (c->sent < size ? WAIT_WRITE : 0);
        struct epoll_event ev;
        if (c->sock == INVALID_SOCKET)
            continue;
        open++;
        if (c->watched == want)
            continue;
        ev.events = EPOLLIN | (want & WAIT_WRITE ? EPOLLOUT : 0);
        ev.data.u32 = (unsigned)i;
        if (epoll_ctl(w->epfd, c->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->sock, &ev) != 0)
            return -2;
        c->watched = want;
    }
    if (open == 0)
        return -1;
    n = epoll_wait(w->epfd, w->events, count, timeoutMs);
    if (n < 0)
        return errno == EINTR ? 0 : -2;
    for (i = 0; i < n; i++) {
        unsigned ev = w->events[i].events;
        w->ready[i].index = (int)w->events[i].data.u32;
        w->ready[i].events = (ev & (EPOLLIN | EPOLLERR | EPOLLHUP) ? WAIT_READ : 0) |
                             (ev & EPOLLOUT ? WAIT_WRITE : 0);
    }
    return n;
#else
    for (i = 0; i < count; i++) {
        w->fds[i].fd = conns[i].sock;
        w->fds[i].events = (short)(POLLIN | (conns[i].sent < size ? POLLOUT : 0));
        w->fds[i].revents = 0;
        if (conns[i].sock == INVALID_SOCKET) /* poll ignores a negative fd, WSAPoll does not */
            w->fds[i].events = 0;
        else
            open++;
    }
    if (open == 0)
        return -1;
#ifdef _WIN32
    n = WSAPoll(w->fds, (ULONG)count, timeoutMs);
#else
    n = poll(w->fds, (nfds_t)count, timeoutMs);
    if (n < 0 && errno == EINTR)
        return 0;
#endif
    if (n < 0)
        return -2;
    for (i = 0, n = 0; i < count; i++) {
        short ev = w->fds[i].revents;
        if (conns[i].sock == INVALID_SOCKET || ev == 0)
            continue;
        w->ready[n].index = i;
        w->ready[n].events = (ev & (POLLIN | POLLERR | POLLHUP) ? WAIT_READ : 0) |
                             (ev & POLLOUT ? WAIT_WRITE : 0);
        n++;
    }
    return n;
#endif
}

/* The loop shared by both modes. Returns the measured duration. */
static double Run(CONN *conns, WAITER *w, const OPTIONS *opt, STATS *st)
{
    double start = NowSeconds(), end = start + opt->seconds, now = start;
    int i, k, n;

    for (i = 0; i < opt->conns; i++) {
        StartMessage(&conns[i], i, opt);
        OnWritable(&conns[i], opt, st);
    }
    do {
        n = WaitForSockets(w, conns, opt->conns, (size_t)opt->size, 100);
        if (n == -1)
            break; /* every connection is closed */
        if (n == -2) {
            fprintf(stderr, "echo_bench: waiting for sockets failed (%d)\n", LastSocketError());
            exit(1);
        }
        now = NowSeconds();
        for (k = 0; k < n; k++) {
            CONN *c = &conns[w->ready[k].index];
            if (c->sock != INVALID_SOCKET && (w->ready[k].events & WAIT_WRITE))
                OnWritable(c, opt, st);
            if (c->sock != INVALID_SOCKET && (w->ready[k].events & WAIT_READ))
                OnReadable(c, w->ready[k].index, opt, st, now < end);
        }
    } while (now < end + DRAIN_SECONDS);

    for (i = 0; i < opt->conns; i++) /* still in flight after the drain: lost */
        if (conns[i].sock != INVALID_SOCKET)
            Fail(&conns[i], st, "no echo within the drain time", 0);
    return (now < end ? now : end) - start;
}

/* Usage never returns (it exits): marked so, no compiler warns about the paths after its calls. */
#if defined(_MSC_VER)
__declspec(noreturn)
#else
__attribute__((noreturn))
#endif
static void Usage(void)
{
    fprintf(stderr,
            "Usage: echo_bench [--churn] [-h host] [-p port] [-c conns] [-s size] [-t seconds]\n"
            "  echo mode (default): conns connections, each with one size-byte message in flight\n"
            "  --churn: conns at a time, each: connect, echo one message, close, repeat\n"
            "  defaults: -h 127.0.0.1 -p 9190 -c 10 -s 64 -t 5; limits: -p 1..65535, -c 1..%d,\n"
            "  -s 1..%d, -t 1..%d\n",
            MAX_CONNS, MAX_SIZE, MAX_SECONDS);
    exit(2);
}

static int ParseInt(const char *text, int min, int max)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > max)
        Usage();
    return (int)v;
}

static void ParseOptions(int argc, char *argv[], OPTIONS *opt)
{
    int i;
    opt->host = "127.0.0.1";
    opt->port = "9190";
    opt->conns = 10;
    opt->size = 64;
    opt->seconds = 5;
    opt->churn = 0;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--churn") == 0)
            opt->churn = 1;
        else if (i + 1 >= argc)
            Usage();
        else if (strcmp(argv[i], "-h") == 0)
            opt->host = argv[++i];
        else if (strcmp(argv[i], "-p") == 0 && ParseInt(argv[i + 1], 1, 65535))
            opt->port = argv[++i]; /* checked: getaddrinfo would take a service name too */
        else if (strcmp(argv[i], "-c") == 0)
            opt->conns = ParseInt(argv[++i], 1, MAX_CONNS);
        else if (strcmp(argv[i], "-s") == 0)
            opt->size = ParseInt(argv[++i], 1, MAX_SIZE);
        else if (strcmp(argv[i], "-t") == 0)
            opt->seconds = ParseInt(argv[++i], 1, MAX_SECONDS);
        else
            Usage();
    }
}

int main(int argc, char *argv[])
{
    OPTIONS opt;
    STATS st;
    CONN *conns;
    WAITER waiter;
    double secs;
    int i;
#ifdef _WIN32
    WSADATA wsaData;
    if (WSAStartup(MAKEWORD(2, 2), &wsaData) != 0)
        return 1;
#endif
    ParseOptions(argc, argv, &opt);
    memset(&st, 0, sizeof(st));
    conns = calloc((size_t)opt.conns, sizeof(CONN));
    if (conns == NULL || !WaiterInit(&waiter, opt.conns))
        return 1;
    for (i = 0; i < opt.conns; i++) {
        conns[i].msg = malloc((size_t)opt.size);
        if (conns[i].msg == NULL)
            return 1;
        conns[i].sock = Connect(&opt);
        if (conns[i].sock == INVALID_SOCKET) {
            fprintf(stderr, "echo_bench: cannot connect to %s:%s (%d)\n", opt.host, opt.port,
                    LastSocketError());
            return 1;
        }
    }

    secs = Run(conns, &waiter, &opt, &st);
    qsort(st.latencies, st.numLatencies, sizeof(double), CompareDoubles);
    printf("mode=%s conns=%d size=%d seconds=%.2f round_trips=%llu rtt_per_s=%.1f mb_per_s=%.3f "
           "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f connections=%llu conn_per_s=%.1f errors=%lu\n",
           opt.churn ? "churn" : "echo", opt.conns, opt.size, secs, st.roundTrips,
           (double)st.roundTrips / secs, (double)st.bytes / secs / 1e6, Percentile(&st, 0.50),
           Percentile(&st, 0.99), Percentile(&st, 1.0), st.connections,
           (double)st.connections / secs, st.errors);
    return st.errors == 0 ? 0 : 1;
}
