/* A parent and a worker child that checkpoint themselves: the parent sends each step's
 * number to the child through one pipe (the next one already in flight), the child answers
 * through another, and the parent prints "step I ANSWER". Every EVERY steps the parent calls
 * forkpoint_checkpoint() (the tree is checkpointed: the parent has a child) and says on
 * stderr what it returned; EVERY 0 leaves the checkpoints to FORKPOINT_INTERVAL.
 *
 *   tree_api STEPS EVERY GO HOLD
 *
 * At step HOLD the parent waits for the file GO. At the end it closes its end, waitpid()s
 * the stored child PID (which must exit 7) and prints PASS. */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/wait.h>

#include "zdtm.h"

extern int forkpoint_checkpoint(void) __attribute__((weak));

static int io_full(int fd, void *buf, size_t n, int out) {
    size_t done_ = 0;
    while (done_ < n) {
        ssize_t r = out ? write(fd, (char *)buf + done_, n - done_)
                        : read(fd, (char *)buf + done_, n - done_);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done_ += r;
    }
    return 0;
}

static uint64_t work(uint64_t x) {
    uint64_t h = 1469598103934665603ULL ^ x;
    for (uint64_t k = 0; k < 300000; k++)
        h = (h ^ k) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    SETUP(argc == 5);
    long steps = atol(argv[1]), every = atol(argv[2]), hold = atol(argv[4]);
    int down[2], up[2];
    SETUP(pipe(down) == 0 && pipe(up) == 0);
    pid_t child = fork();
    SETUP(child >= 0);
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        uint64_t x;
        while (io_full(down[0], &x, sizeof x, 0) == 0) {
            uint64_t y = work(x);
            if (io_full(up[1], &y, sizeof y, 1) != 0)
                _exit(5);
        }
        _exit(7);
    }
    close(down[0]);
    close(up[1]);
    uint64_t first = 1;
    SETUP(io_full(down[1], &first, sizeof first, 1) == 0);
    for (long i = 1; i <= steps; i++) {
        if (i == hold)
            wait_go(argv[3]);
        if (i < steps) {
            uint64_t next = i + 1;
            SETUP(io_full(down[1], &next, sizeof next, 1) == 0);
        }
        uint64_t y;
        CHECK(io_full(up[0], &y, sizeof y, 0) == 0, "the child's answers ended early");
        if (fails)
            break;
        printf("step %ld %016llx\n", i, (unsigned long long)y);
        fflush(stdout);
        if (every > 0 && i % every == 0) {
            int r = forkpoint_checkpoint ? forkpoint_checkpoint() : -2;
            fprintf(stderr, "step %ld: %s\n", i,
                    r == 0   ? "checkpoint written"
                    : r == 1 ? "restarted from the checkpoint"
                    : r == -2 ? "not running under forkpoint"
                              : "checkpoint failed");
        }
    }
    close(down[1]);
    int status = 0;
    pid_t w = waitpid(child, &status, 0);
    CHECK(w == child, "waitpid(%d) returned %d", (int)child, (int)w);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "the child ended with status %#x", status);
    return done();
}
