/* zdtm-style test: pipes whose other end is outside the process.
 *
 *   zdtm_pipe_outside GO
 *
 * Descriptor 3 is the read end of a pipe the test writes "outside-data" into and whose write
 * end only the test holds; descriptor 4 is the write end of a pipe whose read end only the
 * test holds; standard input is a pipe from the test holding "stdin-line\n".
 * After GO appears: descriptor 3 yields exactly the buffered bytes, then end of file (the
 * writer is gone: the test closed it, or this is a restart that cannot reach it); writing to
 * descriptor 4 fails with EPIPE; standard input yields "stdin-line\n" then end of file (after
 * a restart: the restarting command's standard input, which the test fills the same way). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

/* Reads `fd` to end of file (each wait bounded by 10 s); -1 if it never ends. */
static ssize_t read_to_eof(int fd, char *buf, size_t cap) {
    size_t got = 0;
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) != 1)
            return -1;
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return (ssize_t)got;
        got += (size_t)r;
        if (got == cap)
            return -1;
    }
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    signal(SIGPIPE, SIG_IGN);
    struct stat st;
    SETUP(fstat(3, &st) == 0 && S_ISFIFO(st.st_mode) && (fcntl(3, F_GETFL) & O_ACCMODE) == O_RDONLY);
    SETUP(fstat(4, &st) == 0 && S_ISFIFO(st.st_mode) && (fcntl(4, F_GETFL) & O_ACCMODE) == O_WRONLY);
    SETUP(fstat(0, &st) == 0 && S_ISFIFO(st.st_mode));
    int n = 0;
    SETUP(ioctl(3, FIONREAD, &n) == 0 && n == 12);
    SETUP(write(4, "unread", 6) == 6);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    char buf[256] = {0};
    ssize_t r = read_to_eof(3, buf, sizeof buf - 1);
    CHECK(r == 12 && memcmp(buf, "outside-data", 12) == 0,
          "descriptor 3 gave %zd bytes '%s' (-1: no end of file), not 'outside-data' then EOF",
          r, buf);
    errno = 0;
    CHECK(write(4, "x", 1) == -1 && errno == EPIPE,
          "writing to a pipe whose reader is gone must fail with EPIPE");
    memset(buf, 0, sizeof buf);
    r = read_to_eof(0, buf, sizeof buf - 1);
    CHECK(r == 11 && memcmp(buf, "stdin-line\n", 11) == 0,
          "standard input gave %zd bytes '%s', not 'stdin-line\\n' then EOF", r, buf);
    return done();
}
