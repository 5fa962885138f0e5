/*
 * bare_epoll_echo.c - the reference bench/run measures appendix_epoll against: an epoll echo loop
 * with nothing else in it. Not a server to copy.
 *
 * One thread, level-triggered epoll, non-blocking sockets, one recv() and one send() per event,
 * no sessions, no log line per client, no limit, no backpressure: a client whose echo does not fit
 * in its socket's send buffer at once is simply dropped (closed). With one message of up to a few
 * KiB in flight per connection, as echo_bench sends, that never happens, so every byte still comes
 * back and echo_bench checks it. What is left is the least work an epoll echo can do per round
 * trip: the ceiling appendix_epoll is compared with (the target: at least 0.8 of it).
 *
 * It keeps just enough of the stages' contract for bench/run to drive it: `<port>` (0 picks),
 * the line `Listening on port N`, and SIGINT ends it (the default action: no Shutdown line).
 *
 * Build: cc -O2 -std=c11 -Wall -Wextra -o bare_epoll_echo bare_epoll_echo.c
 */
#define _GNU_SOURCE /* accept4 */
#include <sys/socket.h>
#include <sys/epoll.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_EVENTS 256

static void Die(const char *what)
{
    fprintf(stderr, "%s failed: error %d: %s\n", what, errno, strerror(errno));
    exit(1);
}

int main(int argc, char *argv[])
{
    struct sockaddr_in adr;
    socklen_t adrSz = sizeof(adr);
    struct epoll_event ev, events[MAX_EVENTS];
    static char buf[65536];
    int listener, epfd, on = 1;

    if (argc != 2) {
        fprintf(stderr, "Usage: %s <port>\n", argv[0]);
        return 1;
    }
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (listener < 0)
        Die("socket()");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    memset(&adr, 0, sizeof(adr));
    adr.sin_family = AF_INET;
    adr.sin_addr.s_addr = htonl(INADDR_ANY);
    adr.sin_port = htons((unsigned short)atoi(argv[1]));
    if (bind(listener, (struct sockaddr *)&adr, sizeof(adr)) != 0)
        Die("bind()");
    if (listen(listener, SOMAXCONN) != 0)
        Die("listen()");
    if (getsockname(listener, (struct sockaddr *)&adr, &adrSz) != 0)
        Die("getsockname()");
    printf("Listening on port %u\n", ntohs(adr.sin_port));
    fflush(stdout);

    epfd = epoll_create1(0);
    if (epfd < 0)
        Die("epoll_create1()");
    ev.events = EPOLLIN;
    ev.data.fd = listener;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) != 0)
        Die("epoll_ctl()");

    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1), i;
        if (n < 0 && errno != EINTR)
            Die("epoll_wait()");
        for (i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            ssize_t got;
            if (fd == listener) {
                int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
                if (client < 0)
                    continue; /* EAGAIN, a reset in the backlog, out of descriptors: next event */
                ev.events = EPOLLIN;
                ev.data.fd = client;
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, client, &ev) != 0)
                    close(client);
                continue;
            }
            got = recv(fd, buf, sizeof(buf), 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0 || send(fd, buf, (size_t)got, MSG_NOSIGNAL) != got)
                close(fd); /* end, error, or an echo that did not fit at once */
        }
    }
}
