/* zdtm-style test: unix socketpairs inside the process keep their queued data in both
 * directions, and stay connected to each other.
 *
 *   zdtm_socketpair GO           stream socketpairs
 *   zdtm_socketpair GO dgram     datagram and seqpacket socketpairs (message boundaries)
 *
 * Prints "ready", waits until the file GO exists, then checks from inside that the state is
 * exactly as before; exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int sockopt(int fd, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, SOL_SOCKET, opt, &v, &l);
    return v;
}

/* Two messages each way on a socketpair of `type`; after the go, they come out as sent. */
static void messages(int type, const char *what, int phase, int *sv) {
    if (phase == 0) {
        SETUP(socketpair(AF_UNIX, type | SOCK_NONBLOCK, 0, sv) == 0);
        SETUP(send(sv[0], "one", 3, 0) == 3 && send(sv[0], "two!", 4, 0) == 4);
        SETUP(send(sv[1], "back", 4, 0) == 4);
        return;
    }
    char b[16] = {0};
    CHECK(sockopt(sv[0], SO_TYPE) == type, "%s: type %d", what, sockopt(sv[0], SO_TYPE));
    CHECK(recv(sv[1], b, sizeof b, 0) == 3 && memcmp(b, "one", 3) == 0, "%s: first '%s'", what, b);
    memset(b, 0, sizeof b);
    CHECK(recv(sv[1], b, sizeof b, 0) == 4 && memcmp(b, "two!", 4) == 0, "%s: second '%s'", what, b);
    errno = 0;
    CHECK(recv(sv[1], b, sizeof b, 0) == -1 && errno == EAGAIN, "%s: a third message", what);
    memset(b, 0, sizeof b);
    CHECK(recv(sv[0], b, sizeof b, 0) == 4 && memcmp(b, "back", 4) == 0, "%s: back '%s'", what, b);
    CHECK(send(sv[1], "new", 3, 0) == 3 && recv(sv[0], b, sizeof b, 0) == 3, "%s: not paired", what);
}

#define BIG 60000

int main(int argc, char **argv) {
    SETUP(argc == 2 || argc == 3);
    if (argc == 3 && strcmp(argv[2], "dgram") == 0) {
        int d[2], q[2];
        messages(SOCK_DGRAM, "datagram pair", 0, d);
        messages(SOCK_SEQPACKET, "seqpacket pair", 0, q);
        printf("ready\n");
        fflush(stdout);
        wait_go(argv[1]);
        messages(SOCK_DGRAM, "datagram pair", 1, d);
        messages(SOCK_SEQPACKET, "seqpacket pair", 1, q);
        return done();
    }
    int s[2], big[2];
    SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
    SETUP(write(s[0], "ping", 4) == 4 && write(s[1], "pong!", 5) == 5);
    SETUP(fcntl(s[1], F_SETFL, O_NONBLOCK) == 0);
    SETUP(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, big) == 0);
    static unsigned char pat[BIG], got[BIG + 1];
    for (int i = 0; i < BIG; i++)
        pat[i] = (unsigned char)(i * 13 + i / 253);
    SETUP(write(big[0], pat, BIG) == BIG);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    int n = -1;
    char b[16] = {0};
    CHECK(ioctl(s[1], FIONREAD, &n) == 0 && n == 4, "%d bytes queued for s[1], not 4", n);
    CHECK(read(s[1], b, sizeof b) == 4 && memcmp(b, "ping", 4) == 0, "s[1] read '%s'", b);
    n = -1;
    CHECK(ioctl(s[0], FIONREAD, &n) == 0 && n == 5, "%d bytes queued for s[0], not 5", n);
    memset(b, 0, sizeof b);
    CHECK(read(s[0], b, 5) == 5 && memcmp(b, "pong!", 5) == 0, "s[0] read '%s'", b);
    errno = 0;
    CHECK(read(s[1], b, 1) == -1 && errno == EAGAIN, "an emptied non-blocking end must say EAGAIN");
    CHECK((fcntl(s[0], F_GETFL) & O_NONBLOCK) == 0, "s[0] gained O_NONBLOCK");
    CHECK(sockopt(s[0], SO_TYPE) == SOCK_STREAM && sockopt(s[0], SO_DOMAIN) == AF_UNIX,
          "not a unix stream socket");
    memset(b, 0, sizeof b);
    CHECK(write(s[1], "x", 1) == 1 && read(s[0], b, 1) == 1 && b[0] == 'x', "s[1] -> s[0] broken");
    CHECK(write(s[0], "y", 1) == 1 && read(s[1], b, 1) == 1 && b[0] == 'y', "s[0] -> s[1] broken");

    CHECK(fcntl(big[1], F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    SETUP(fcntl(big[1], F_SETFL, O_NONBLOCK) == 0);
    size_t total = 0;
    for (;;) {
        ssize_t r = read(big[1], got + total, sizeof got - total);
        if (r <= 0)
            break;
        total += (size_t)r;
    }
    CHECK(total == BIG && memcmp(got, pat, BIG) == 0, "%zu bytes queued, not %d (or they differ)",
          total, BIG);

    close(s[0]);
    CHECK(read(s[1], b, 1) == 0, "closing one end does not give the other end EOF");
    return done();
}
