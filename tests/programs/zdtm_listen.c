/* zdtm-style test: listening and bound sockets come back with their addresses and options.
 *
 *   zdtm_listen GO tcp           a TCP listener on 127.0.0.1 (and ::1 if there is IPv6)
 *   zdtm_listen GO tcp-options   the same, checking the socket options it set
 *   zdtm_listen GO unix PATH     a unix stream listener at PATH, an abstract one, and a
 *                                unix datagram socket at PATH.dgram
 *   zdtm_listen GO udp           a UDP socket bound to 127.0.0.1
 *
 * Prints "ready port N" (N = 0 for unix), waits until the file GO exists, checks the
 * addresses and options, then prints "serving" and serves one client of the test with a
 * bounded wait: a TCP or unix stream client sends "hello\n" and gets "hi N\n"; a UDP or unix
 * datagram sender sends "dgram" and gets "ack" (UDP). Exit 0 and "PASS" only if all is as
 * before, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int sockopt(int fd, int level, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l) != 0)
        return -2;
    return v;
}

static int wait_in(int fd, int ms) {
    struct pollfd pf = {fd, POLLIN, 0};
    int r;
    do
        r = poll(&pf, 1, ms);
    while (r < 0 && errno == EINTR);
    return r == 1;
}

/* Accepts one client (bounded), reads "hello\n", answers "hi PORT\n". */
static void serve_stream(int ls, int port, const char *what) {
    CHECK(wait_in(ls, 60000), "%s: no client within 60 s", what);
    int c = accept(ls, NULL, NULL);
    CHECK(c >= 0, "%s: accept", what);
    if (c < 0)
        return;
    char b[32] = {0};
    size_t got = 0;
    while (got < 6 && wait_in(c, 10000)) {
        ssize_t r = read(c, b + got, sizeof b - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    CHECK(got == 6 && strcmp(b, "hello\n") == 0, "%s: the client sent '%s'", what, b);
    char reply[32];
    int n = snprintf(reply, sizeof reply, "hi %d\n", port);
    CHECK(write(c, reply, n) == n, "%s: reply", what);
    close(c);
}

/* Connects to our own listener at `addr`, and accepts that connection. */
static void self_connect(int ls, const struct sockaddr *addr, socklen_t len, const char *what) {
    int c = socket(addr->sa_family, SOCK_STREAM, 0);
    CHECK(c >= 0 && connect(c, addr, len) == 0, "%s: connect to own listener", what);
    CHECK(wait_in(ls, 5000), "%s: the connection is not queued", what);
    int a = accept(ls, NULL, NULL);
    char b = 0;
    CHECK(a >= 0 && write(c, "z", 1) == 1 && read(a, &b, 1) == 1 && b == 'z', "%s: no data", what);
    close(a);
    close(c);
}

static int tcp(const char *go, int options) {
    int one = 1, rcvbuf = 0;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    SETUP(ls >= 0);
    SETUP(setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    if (options) {
        int sz = 131072;
        SETUP(setsockopt(ls, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) == 0);
        SETUP(setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz) == 0);
        SETUP(setsockopt(ls, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
        rcvbuf = sockopt(ls, SOL_SOCKET, SO_RCVBUF);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    SETUP(bind(ls, (struct sockaddr *)&a, sizeof a) == 0 && listen(ls, 8) == 0);
    SETUP(getsockname(ls, (struct sockaddr *)&a, &al) == 0);
    int port = ntohs(a.sin_port);
    /* IPv6 loopback, if this machine has it. */
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    socklen_t a6l = sizeof a6;
    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (l6 >= 0 && (setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0 ||
                    bind(l6, (struct sockaddr *)&a6, sizeof a6) != 0 || listen(l6, 8) != 0 ||
                    getsockname(l6, (struct sockaddr *)&a6, &a6l) != 0)) {
        close(l6);
        l6 = -1;
    }
    printf("ready port %d\n", port);
    fflush(stdout);

    wait_go(go);

    struct sockaddr_in now = {0};
    socklen_t nl = sizeof now;
    CHECK(getsockname(ls, (struct sockaddr *)&now, &nl) == 0 && now.sin_family == AF_INET &&
              ntohs(now.sin_port) == port && now.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
          "bound to %s:%d, not 127.0.0.1:%d", inet_ntoa(now.sin_addr), ntohs(now.sin_port), port);
    CHECK(sockopt(ls, SOL_SOCKET, SO_ACCEPTCONN) == 1, "not listening");
    CHECK(sockopt(ls, SOL_SOCKET, SO_TYPE) == SOCK_STREAM, "not a stream socket");
    CHECK(sockopt(ls, SOL_SOCKET, SO_REUSEADDR) == 1, "SO_REUSEADDR is off");
    CHECK(fcntl(ls, F_GETFL) & O_NONBLOCK, "lost O_NONBLOCK");
    if (options) {
        CHECK(sockopt(ls, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE is off");
        CHECK(sockopt(ls, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "SO_RCVBUF %d, was %d",
              sockopt(ls, SOL_SOCKET, SO_RCVBUF), rcvbuf);
        CHECK(sockopt(ls, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY is off");
    }
    if (l6 >= 0) {
        struct sockaddr_in6 n6 = {0};
        socklen_t n6l = sizeof n6;
        CHECK(getsockname(l6, (struct sockaddr *)&n6, &n6l) == 0 && n6.sin6_family == AF_INET6 &&
                  n6.sin6_port == a6.sin6_port &&
                  memcmp(&n6.sin6_addr, &in6addr_loopback, 16) == 0,
              "the IPv6 listener is not on [::1]:%d", ntohs(a6.sin6_port));
        CHECK(sockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "IPV6_V6ONLY is off");
        self_connect(l6, (struct sockaddr *)&a6, sizeof a6, "IPv6 listener");
    }
    printf("serving\n");
    fflush(stdout);
    serve_stream(ls, port, "TCP listener");
    return done();
}

static int unix_sockets(const char *go, const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX}, ab = {.sun_family = AF_UNIX},
                       ad = {.sun_family = AF_UNIX};
    SETUP(strlen(path) + 7 < sizeof a.sun_path);
    strcpy(a.sun_path, path);
    snprintf(ad.sun_path, sizeof ad.sun_path, "%s.dgram", path);
    /* An abstract name: a NUL, then the name. */
    int ablen = snprintf(ab.sun_path + 1, sizeof ab.sun_path - 1, "zdtm-listen-%d", getpid());
    socklen_t ablen_all = offsetof(struct sockaddr_un, sun_path) + 1 + ablen;
    int ls = socket(AF_UNIX, SOCK_STREAM, 0), la = socket(AF_UNIX, SOCK_STREAM, 0),
        ld = socket(AF_UNIX, SOCK_DGRAM, 0);
    SETUP(ls >= 0 && la >= 0 && ld >= 0);
    SETUP(bind(ls, (struct sockaddr *)&a, sizeof a) == 0 && listen(ls, 8) == 0);
    SETUP(bind(la, (struct sockaddr *)&ab, ablen_all) == 0 && listen(la, 8) == 0);
    SETUP(bind(ld, (struct sockaddr *)&ad, sizeof ad) == 0);
    printf("ready port 0\n");
    fflush(stdout);

    wait_go(go);

    struct sockaddr_un now = {0};
    socklen_t nl = sizeof now;
    CHECK(getsockname(ls, (struct sockaddr *)&now, &nl) == 0 && now.sun_family == AF_UNIX &&
              strcmp(now.sun_path, path) == 0,
          "bound to '%s', not '%s'", now.sun_path, path);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "%s is not a socket", path);
    CHECK(sockopt(ls, SOL_SOCKET, SO_ACCEPTCONN) == 1, "not listening");
    memset(&now, 0, sizeof now);
    nl = sizeof now;
    CHECK(getsockname(la, (struct sockaddr *)&now, &nl) == 0 && nl == ablen_all &&
              memcmp(now.sun_path, ab.sun_path, ablen + 1) == 0,
          "the abstract listener lost its name");
    self_connect(la, (struct sockaddr *)&ab, ablen_all, "abstract listener");
    printf("serving\n");
    fflush(stdout);
    serve_stream(ls, 0, "unix listener");
    char b[16] = {0};
    CHECK(wait_in(ld, 60000) && recv(ld, b, sizeof b, 0) == 5 && strcmp(b, "dgram") == 0,
          "the unix datagram socket received '%s'", b);
    return done();
}

static int udp(const char *go) {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    SETUP(u >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    SETUP(bind(u, (struct sockaddr *)&a, sizeof a) == 0);
    SETUP(getsockname(u, (struct sockaddr *)&a, &al) == 0);
    int port = ntohs(a.sin_port);
    printf("ready port %d\n", port);
    fflush(stdout);

    wait_go(go);

    struct sockaddr_in now = {0};
    socklen_t nl = sizeof now;
    CHECK(getsockname(u, (struct sockaddr *)&now, &nl) == 0 && ntohs(now.sin_port) == port &&
              now.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
          "bound to port %d, not %d", ntohs(now.sin_port), port);
    CHECK(sockopt(u, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM, "not a datagram socket");
    printf("serving\n");
    fflush(stdout);
    char b[16] = {0};
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    CHECK(wait_in(u, 60000), "no datagram within 60 s");
    CHECK(recvfrom(u, b, sizeof b, 0, (struct sockaddr *)&from, &fl) == 5 && strcmp(b, "dgram") == 0,
          "received '%s'", b);
    CHECK(sendto(u, "ack", 3, 0, (struct sockaddr *)&from, fl) == 3, "cannot answer");
    return done();
}

int main(int argc, char **argv) {
    SETUP(argc >= 3);
    if (strcmp(argv[2], "tcp") == 0)
        return tcp(argv[1], 0);
    if (strcmp(argv[2], "tcp-options") == 0)
        return tcp(argv[1], 1);
    if (strcmp(argv[2], "unix") == 0 && argc == 4)
        return unix_sockets(argv[1], argv[3]);
    if (strcmp(argv[2], "udp") == 0)
        return udp(argv[1]);
    SETUP(!"a known mode");
    return 2;
}
