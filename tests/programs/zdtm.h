/* Shared by the zdtm-style test programs (tests/programs/zdtm_*.c): CHECK records a failed
 * check and goes on, SETUP ends the program (exit 2) when its own setup fails, wait_go waits
 * for the harness's GO file, done() prints PASS or the number of failed checks. The e2e
 * harness writes this file next to every program it compiles. */
#ifndef FORKPOINT_ZDTM_H
#define FORKPOINT_ZDTM_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fails;
#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            int e_ = errno;                                                               \
            fails++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fprintf(stderr, " [errno %d %s]\n", e_, strerror(e_));                        \
        }                                                                                 \
    } while (0)
#define SETUP(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "FAIL setup %s:%d: %s: %s\n", __FILE__, __LINE__, #cond,      \
                    strerror(errno));                                                     \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)
static inline double mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
/* Waits (at most 600 s, on the clock: signals may cut usleep short) for the file GO. */
static inline void wait_go(const char *go) {
    double end = mono() + 600;
    while (access(go, F_OK) != 0) {
        if (mono() > end) {
            fprintf(stderr, "FAIL: %s did not appear within 600 s\n", go);
            exit(3);
        }
        usleep(5000);
    }
}
static inline int done(void) {
    if (fails) {
        fprintf(stderr, "%d check(s) failed\n", fails);
        return 1;
    }
    printf("PASS\n");
    return 0;
}

#endif
