/* zdtm-style test: TCP and unix stream connections to peers outside the process. A restart
 * cannot bring the peer back (TCP repair needs privileges; a unix peer is another process),
 * so each must come back as a socket that reports
 * the connection as gone — end of file or a reset on reading, EPIPE or a reset on writing —
 * and never as garbage or a hang.
 *
 *   zdtm_tcp_peer GO PORT UNIXPATH
 *
 * Connects to the test's listener on 127.0.0.1:PORT, sends "hi\n" and reads "welcome\n";
 * the same with the test's unix stream listener at UNIXPATH;
 * then listens on 127.0.0.1, prints "listen N", accepts the test's connection and reads
 * "client\n". Prints "ready", waits until the file GO exists (the test has closed its ends
 * by then, or this is a restart), then checks both sockets. Exit 0 and "PASS" only if both
 * report the connection as gone, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int wait_in(int fd, int ms) {
    struct pollfd pf = {fd, POLLIN, 0};
    int r;
    do
        r = poll(&pf, 1, ms);
    while (r < 0 && errno == EINTR);
    return r == 1;
}

/* Reads exactly strlen(want) bytes (bounded) and compares. */
static int expect(int fd, const char *want) {
    char b[64] = {0};
    size_t got = 0, n = strlen(want);
    while (got < n && wait_in(fd, 10000)) {
        ssize_t r = read(fd, b + got, n - got);
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return got == n && memcmp(b, want, n) == 0;
}

static void check_gone(int s, const char *what) {
    CHECK(wait_in(s, 10000), "%s: nothing to read within 10 s: the socket hangs", what);
    char b[64];
    errno = 0;
    ssize_t r = read(s, b, sizeof b);
    CHECK(r == 0 || (r < 0 && errno == ECONNRESET),
          "%s: read returned %zd (expected end of file or ECONNRESET)", what, r);
    /* The first write to a closed TCP peer may still be accepted; the next fail. */
    ssize_t w = 0;
    for (int i = 0; i < 100 && w >= 0; i++) {
        w = write(s, "x", 1);
        if (w >= 0)
            usleep(20000);
    }
    CHECK(w < 0 && (errno == EPIPE || errno == ECONNRESET),
          "%s: writes do not fail with EPIPE or ECONNRESET (last write %zd)", what, w);
}

int main(int argc, char **argv) {
    SETUP(argc == 4);
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons(atoi(argv[2]))};
    int c = socket(AF_INET, SOCK_STREAM, 0);
    SETUP(c >= 0 && connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    SETUP(write(c, "hi\n", 3) == 3);
    SETUP(expect(c, "welcome\n"));
    struct sockaddr_un ua = {.sun_family = AF_UNIX};
    SETUP(strlen(argv[3]) < sizeof ua.sun_path);
    strcpy(ua.sun_path, argv[3]);
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    SETUP(u >= 0 && connect(u, (struct sockaddr *)&ua, sizeof ua) == 0);
    SETUP(write(u, "hi\n", 3) == 3);
    SETUP(expect(u, "welcome\n"));

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in l = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t ll = sizeof l;
    SETUP(ls >= 0 && bind(ls, (struct sockaddr *)&l, sizeof l) == 0 && listen(ls, 4) == 0);
    SETUP(getsockname(ls, (struct sockaddr *)&l, &ll) == 0);
    printf("listen %d\n", ntohs(l.sin_port));
    fflush(stdout);
    SETUP(wait_in(ls, 60000));
    int acc = accept(ls, NULL, NULL);
    SETUP(acc >= 0);
    SETUP(expect(acc, "client\n"));
    close(ls);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    check_gone(c, "the connection this program made");
    check_gone(acc, "the connection this program accepted");
    check_gone(u, "the unix connection this program made");
    return done();
}
