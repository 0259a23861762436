/* zdtm-style test: pipes with both ends in the process keep their buffered bytes, their
 * size, their flags and their EOF.
 *
 *   zdtm_pipe GO                a pipe with 3 bytes, and one with 200000 bytes
 *   zdtm_pipe GO closed-writer  an empty pipe whose write end the program closed
 *   zdtm_pipe GO fifo PATH      a FIFO made at PATH, both ends open, 4 bytes in it
 *
 * Sets the state up, prints "ready", waits until the file GO exists (the test creates it
 * after the checkpoint, the kill and the restart; or at once for an uninterrupted run), then
 * checks from inside that everything is exactly as before. Exit 0 and "PASS" only if so;
 * each difference is a "FAIL" line on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define BIG 200000

/* An empty pipe whose writer is closed: its reader sees end of file. No other process ever
 * held the write end: nothing about it is outside the process. */
static int closed_writer(const char *go) {
    int eof[2];
    SETUP(pipe(eof) == 0);
    close(eof[1]);
    printf("ready\n");
    fflush(stdout);
    wait_go(go);
    char b[1];
    CHECK(read(eof[0], b, 1) == 0, "the pipe without a writer does not say end of file");
    return done();
}

/* A named FIFO with both ends in the process: after a restart it is still the FIFO at PATH
 * (another process opening PATH reaches it), with its bytes. */
static int fifo(const char *go, const char *path) {
    SETUP(mkfifo(path, 0600) == 0);
    int r = open(path, O_RDONLY | O_NONBLOCK);
    int w = open(path, O_WRONLY);
    SETUP(r >= 0 && w >= 0 && write(w, "fifo", 4) == 4);
    printf("ready\n");
    fflush(stdout);
    wait_go(go);
    char b[8] = {0};
    CHECK(read(r, b, sizeof b) == 4 && memcmp(b, "fifo", 4) == 0, "the FIFO held '%s'", b);
    struct stat st, named;
    CHECK(fstat(r, &st) == 0 && stat(path, &named) == 0 && S_ISFIFO(st.st_mode) &&
              st.st_ino == named.st_ino && st.st_dev == named.st_dev,
          "the descriptor is no longer the FIFO at %s (an anonymous pipe?)", path);
    /* Another opener of the path reaches the program's FIFO. */
    int w2 = open(path, O_WRONLY | O_NONBLOCK);
    memset(b, 0, sizeof b);
    CHECK(w2 >= 0 && write(w2, "two", 3) == 3 && read(r, b, sizeof b) == 3 &&
              memcmp(b, "two", 3) == 0,
          "bytes written to %s by path do not reach the program's descriptor ('%s')", path, b);
    return done();
}

int main(int argc, char **argv) {
    SETUP(argc == 2 || argc == 3 || argc == 4);
    if (argc == 4 && strcmp(argv[2], "fifo") == 0)
        return fifo(argv[1], argv[3]);
    if (argc == 3 && strcmp(argv[2], "closed-writer") == 0)
        return closed_writer(argv[1]);
    /* 3 bytes in a pipe; the read end non-blocking, the write end close-on-exec. */
    int p[2];
    SETUP(pipe(p) == 0);
    SETUP(write(p[1], "abc", 3) == 3);
    SETUP(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    SETUP(fcntl(p[1], F_SETFD, FD_CLOEXEC) == 0);
    /* 200000 bytes in a pipe enlarged to 256 KiB. */
    static unsigned char pat[BIG], got[BIG + 1];
    for (int i = 0; i < BIG; i++)
        pat[i] = (unsigned char)(i * 7 + i / 251);
    int big[2];
    SETUP(pipe2(big, O_CLOEXEC) == 0);
    SETUP(fcntl(big[1], F_SETPIPE_SZ, 256 * 1024) >= 256 * 1024);
    int big_size = fcntl(big[0], F_GETPIPE_SZ);
    SETUP(write(big[1], pat, BIG) == BIG);
    struct stat s0, s1;
    SETUP(fstat(p[0], &s0) == 0 && fstat(p[1], &s1) == 0 && s0.st_ino == s1.st_ino);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    int n = -1;
    CHECK(ioctl(p[0], FIONREAD, &n) == 0 && n == 3, "FIONREAD says %d bytes, not 3", n);
    char b[8] = {0};
    CHECK(read(p[0], b, sizeof b) == 3 && memcmp(b, "abc", 3) == 0, "read '%s'", b);
    errno = 0;
    CHECK(read(p[0], b, 1) == -1 && errno == EAGAIN,
          "an emptied pipe whose writer is open must say EAGAIN");
    CHECK(fcntl(p[0], F_GETFL) & O_NONBLOCK, "the read end lost O_NONBLOCK");
    CHECK((fcntl(p[0], F_GETFD) & FD_CLOEXEC) == 0, "the read end gained FD_CLOEXEC");
    CHECK(fcntl(p[1], F_GETFD) & FD_CLOEXEC, "the write end lost FD_CLOEXEC");
    CHECK((fcntl(p[1], F_GETFL) & O_ACCMODE) == O_WRONLY, "the write end is not O_WRONLY");
    CHECK((fcntl(p[0], F_GETFL) & O_ACCMODE) == O_RDONLY, "the read end is not O_RDONLY");
    CHECK(fstat(p[0], &s0) == 0 && fstat(p[1], &s1) == 0 && S_ISFIFO(s0.st_mode) &&
              s0.st_ino == s1.st_ino,
          "the two ends are not one pipe any more");
    memset(b, 0, sizeof b);
    CHECK(write(p[1], "de", 2) == 2 && read(p[0], b, sizeof b) == 2 && memcmp(b, "de", 2) == 0,
          "the pipe does not carry new bytes: '%s'", b);

    CHECK(fcntl(big[0], F_GETPIPE_SZ) == big_size, "pipe size %d, was %d",
          fcntl(big[0], F_GETPIPE_SZ), big_size);
    CHECK(fcntl(big[0], F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    SETUP(fcntl(big[0], F_SETFL, O_NONBLOCK) == 0);
    size_t total = 0;
    for (;;) {
        ssize_t r = read(big[0], got + total, sizeof got - total);
        if (r <= 0)
            break;
        total += (size_t)r;
    }
    CHECK(total == BIG, "the big pipe held %zu bytes, not %d", total, BIG);
    CHECK(memcmp(got, pat, BIG) == 0, "the big pipe's bytes differ");
    return done();
}
