/* zdtm-style test: an inotify descriptor. forkpoint cannot restore its watches (they name
 * inodes, and reopening by handle needs privileges): it puts /dev/null in its place and says
 * so. This program shows what it finds.
 *
 *   zdtm_inotify GO DIR
 *
 * Watches DIR, prints "ready", waits until the file GO exists, then prints "inotify LINK"
 * (what descriptor's /proc/self/fd link is now) and "events N" (events read after creating a
 * file in DIR, -1 if reading failed, 0 if none came within 2 s). Exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
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
static double mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
/* Waits (at most 600 s, on the clock: signals may cut usleep short) for the file GO. */
static void wait_go(const char *go) {
    double end = mono() + 600;
    while (access(go, F_OK) != 0) {
        if (mono() > end) {
            fprintf(stderr, "FAIL: %s did not appear within 600 s\n", go);
            exit(3);
        }
        usleep(5000);
    }
}
static int done(void) {
    if (fails) {
        fprintf(stderr, "%d check(s) failed\n", fails);
        return 1;
    }
    printf("PASS\n");
    return 0;
}

int main(int argc, char **argv) {
    SETUP(argc == 3);
    int in = inotify_init1(IN_NONBLOCK);
    SETUP(in >= 0 && inotify_add_watch(in, argv[2], IN_CREATE) >= 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    char path[64], link[256] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", in);
    SETUP(readlink(path, link, sizeof link - 1) > 0);
    printf("inotify %s\n", link);
    char file[4096];
    snprintf(file, sizeof file, "%s/new-file", argv[2]);
    int fd = open(file, O_WRONLY | O_CREAT, 0644);
    SETUP(fd >= 0);
    close(fd);
    struct pollfd pf = {in, POLLIN, 0};
    int events = 0;
    if (poll(&pf, 1, 2000) == 1) {
        char buf[4096] __attribute__((aligned(8)));
        ssize_t r = read(in, buf, sizeof buf);
        events = r < 0 ? -1 : 0;
        for (ssize_t off = 0; off < r; events++)
            off += (ssize_t)sizeof(struct inotify_event) + ((struct inotify_event *)(buf + off))->len;
    }
    printf("events %d\n", events);
    return done();
}
