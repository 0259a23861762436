/* A small real program for the descriptor tests: an epoll-based TCP line echo server with a
 * listening socket, an eventfd and a self-pipe for signals.
 *
 *   zdtm_echo_server
 *
 * Listens on 127.0.0.1 (port chosen by the kernel) and prints "ready port N". Each client
 * line is echoed back and counted by adding 1 to an eventfd; the count is only drained from
 * the eventfd when a client asks for "stats", so an idle server holds its count in the
 * eventfd. SIGUSR1 is counted through a self-pipe (the handler writes a byte; the main loop
 * reads it). Commands: "stats" answers "served N signals M"; "quit" answers "bye" and the
 * server exits 0 after printing "exit served N signals M". Prints "closed K" each time it
 * closes a client (K clients closed so far). Every failure is a "FAIL" line on stderr and a
 * non-zero exit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64
#define TAG_LISTENER UINT64_MAX
#define TAG_SIGNALS (UINT64_MAX - 1)

static int sigpipe_w = -1;
static void on_usr1(int s) {
    (void)s;
    int e = errno;
    char c = 'u';
    (void)write(sigpipe_w, &c, 1);
    errno = e;
}

static void die(const char *what) {
    fprintf(stderr, "FAIL: %s: %s\n", what, strerror(errno));
    exit(1);
}

struct client {
    int fd;
    size_t len;
    char buf[4096];
};
static struct client clients[MAX_CLIENTS];
static int ep, counter, sigpipe_r, closed;
static uint64_t served, signals;

static void drain_signals(void) {
    char b[64];
    ssize_t r;
    while ((r = read(sigpipe_r, b, sizeof b)) > 0)
        signals += (uint64_t)r;
}

static void drop(struct client *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    printf("closed %d\n", ++closed);
    fflush(stdout);
}

static int reply(struct client *c, const char *s, size_t n) {
    /* Small replies to a client that reads them: a blocking write is fine here. */
    return write(c->fd, s, n) == (ssize_t)n;
}

/* Handles the complete lines in c->buf. Returns 1 when asked to quit. */
static int lines(struct client *c) {
    char *nl;
    while ((nl = memchr(c->buf, '\n', c->len))) {
        size_t n = (size_t)(nl - c->buf) + 1;
        int quit = 0;
        if (n == 6 && memcmp(c->buf, "stats\n", 6) == 0) {
            uint64_t v = 0;
            if (read(counter, &v, 8) == 8)
                served += v;
            drain_signals();
            char out[128];
            int k = snprintf(out, sizeof out, "served %llu signals %llu\n",
                             (unsigned long long)served, (unsigned long long)signals);
            reply(c, out, (size_t)k);
        } else if (n == 5 && memcmp(c->buf, "quit\n", 5) == 0) {
            reply(c, "bye\n", 4);
            quit = 1;
        } else {
            uint64_t one = 1;
            if (!reply(c, c->buf, n))
                fprintf(stderr, "warning: a client went away\n");
            if (write(counter, &one, 8) != 8)
                die("eventfd write");
        }
        memmove(c->buf, c->buf + n, c->len - n);
        c->len -= n;
        if (quit)
            return 1;
    }
    if (c->len == sizeof c->buf)
        c->len = 0; /* an over-long line: dropped */
    return 0;
}

int main(void) {
    int sp[2];
    if (pipe2(sp, O_NONBLOCK | O_CLOEXEC) != 0)
        die("pipe");
    sigpipe_r = sp[0];
    sigpipe_w = sp[1];
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        die("sigaction");
    signal(SIGPIPE, SIG_IGN);
    counter = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (counter < 0 || ls < 0 || ep < 0)
        die("eventfd, socket or epoll");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 64) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0)
        die("listen");
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = TAG_LISTENER};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e) != 0)
        die("epoll_ctl listener");
    e.data.u64 = TAG_SIGNALS;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sigpipe_r, &e) != 0)
        die("epoll_ctl self-pipe");
    for (int i = 0; i < MAX_CLIENTS; i++)
        clients[i].fd = -1;
    printf("ready port %d\n", ntohs(a.sin_port));
    fflush(stdout);

    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_LISTENER) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                    int k = 0;
                    while (k < MAX_CLIENTS && clients[k].fd >= 0)
                        k++;
                    if (k == MAX_CLIENTS) {
                        close(c);
                        continue;
                    }
                    clients[k].fd = c;
                    clients[k].len = 0;
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)k};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) != 0)
                        die("epoll_ctl client");
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                    die("accept");
            } else if (tag == TAG_SIGNALS) {
                drain_signals();
            } else if (tag < MAX_CLIENTS && clients[tag].fd >= 0) {
                struct client *c = &clients[tag];
                ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
                if (r < 0 && (errno == EINTR || errno == EAGAIN))
                    continue;
                if (r <= 0) {
                    drop(c);
                    continue;
                }
                c->len += (size_t)r;
                if (lines(c)) {
                    uint64_t v = 0;
                    if (read(counter, &v, 8) == 8)
                        served += v;
                    drain_signals();
                    drop(c);
                    printf("exit served %llu signals %llu\n", (unsigned long long)served,
                           (unsigned long long)signals);
                    return 0;
                }
            }
        }
    }
}
