/* A two-process job with data in flight both ways: the parent feeds numbers to a child
 * through one pipe and reads the child's answers through another; it keeps the child's PID
 * and waits for exactly that PID at the end.
 *
 *   tree_pipeline GO
 *
 * Fills both pipes (about 1000 numbers ahead, answers left unread), prints "ready", waits
 * for the file GO, then finishes the work, closes its end, `waitpid`s the stored child PID
 * (which must exit 7) and prints the checksum of every answer, then PASS. A restart that
 * lost a pipe's contents, joined the pipes wrongly or gave the child another PID prints a
 * different checksum or FAILs. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include "zdtm.h"

#define N 20000

static int ioctl_fionread_ok(int fd, int *n) { return ioctl(fd, FIONREAD, n) == 0; }
#define AHEAD 1000

static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, (const char *)buf + put, n - put);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        put += r;
    }
    return 0;
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    int down[2], up[2];
    SETUP(pipe(down) == 0 && pipe(up) == 0);
    pid_t child = fork();
    SETUP(child >= 0);
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        uint64_t x;
        while (read_full(down[0], &x, sizeof x) == 0) {
            uint64_t y = x * x + 1;
            if (write_full(up[1], &y, sizeof y) != 0)
                _exit(5);
        }
        _exit(7);
    }
    close(down[0]);
    close(up[1]);
    uint64_t sum = 0, sent = 0, got = 0;
    /* Numbers ahead in the down pipe, answers waiting in the up pipe. */
    for (; sent < AHEAD; sent++)
        SETUP(write_full(down[1], &sent, sizeof sent) == 0);
    /* Let the child answer some (its answers stay in the up pipe). */
    double until = mono() + 10;
    int avail = 0;
    while (mono() < until) {
        SETUP(ioctl_fionread_ok(up[0], &avail));
        if (avail >= 800 * 8)
            break;
        usleep(1000);
    }
    printf("ready\n");
    fflush(stdout);
    wait_go(argv[1]);
    while (got < N) {
        if (sent < N && sent - got < AHEAD) {
            SETUP(write_full(down[1], &sent, sizeof sent) == 0);
            sent++;
            continue;
        }
        uint64_t y;
        CHECK(read_full(up[0], &y, sizeof y) == 0, "the child's answers ended early");
        if (fails)
            break;
        sum = sum * 31 + y;
        got++;
    }
    close(down[1]);
    int status = 0;
    pid_t w = waitpid(child, &status, 0);
    CHECK(w == child, "waitpid(%d) returned %d", (int)child, (int)w);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "the child ended with status %#x", status);
    printf("sum=%llu answers=%llu\n", (unsigned long long)sum, (unsigned long long)got);
    return done();
}
