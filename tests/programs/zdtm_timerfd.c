/* zdtm-style test: timerfds keep their clock, their period and the time to their next
 * expiry, and fire on time after a restart.
 *
 *   zdtm_timerfd GO            armed, periodic and disarmed timers
 *   zdtm_timerfd GO expired    a timer that expired before the checkpoint and was not read
 *
 * Prints "ready", waits until the file GO exists, then checks from inside that the state is
 * exactly as before; exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static double ts(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }

/* The value of "key" in /proc/self/fdinfo/FD, or -1. */
static long fdinfo_long(int fd, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0)
            v = strtol(line + strlen(key), NULL, 10);
    fclose(f);
    return v;
}

static int expired_mode(const char *go) {
    int t = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    SETUP(t >= 0);
    struct itimerspec its = {{0, 0}, {0, 1000000}};
    SETUP(timerfd_settime(t, 0, &its, NULL) == 0);
    struct pollfd pf = {t, POLLIN, 0};
    SETUP(poll(&pf, 1, 5000) == 1);
    printf("ready\n");
    fflush(stdout);

    wait_go(go);

    uint64_t ticks = 0;
    CHECK(read(t, &ticks, 8) == 8 && ticks == 1,
          "the expiry that was not read is lost: read gave %" PRIu64 " ticks", ticks);
    return done();
}

int main(int argc, char **argv) {
    SETUP(argc == 2 || argc == 3);
    if (argc == 3 && strcmp(argv[2], "expired") == 0)
        return expired_mode(argv[1]);
    /* One-shot, 3 s ahead. */
    int once = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    /* Every 100 ms on the realtime clock. */
    int tick = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    /* Never armed. */
    int idle = timerfd_create(CLOCK_BOOTTIME, 0);
    SETUP(once >= 0 && tick >= 0 && idle >= 0);
    struct itimerspec a = {{0, 0}, {3, 0}}, b = {{0, 100000000}, {0, 100000000}};
    SETUP(timerfd_settime(once, 0, &a, NULL) == 0);
    SETUP(timerfd_settime(tick, 0, &b, NULL) == 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);
    double go = mono();

    struct itimerspec cur;
    CHECK(timerfd_gettime(once, &cur) == 0 && ts(cur.it_value) > 0 && ts(cur.it_value) <= 3.0 &&
              ts(cur.it_interval) == 0,
          "the one-shot timer is not armed for at most 3 s: %.3f s (interval %.3f)",
          ts(cur.it_value), ts(cur.it_interval));
    CHECK(fdinfo_long(once, "clockid:") == CLOCK_MONOTONIC, "clock %ld",
          fdinfo_long(once, "clockid:"));
    struct pollfd pf = {once, POLLIN, 0};
    int fired = poll(&pf, 1, 4000);
    double after = mono() - go;
    CHECK(fired == 1, "the one-shot timer did not fire within 4 s");
    CHECK(after <= 3.3, "the one-shot timer fired %.3f s after the go, not within 3 s", after);
    uint64_t ticks = 0;
    CHECK(read(once, &ticks, 8) == 8 && ticks == 1, "%" PRIu64 " expiries, not 1", ticks);
    errno = 0;
    CHECK(read(once, &ticks, 8) == -1 && errno == EAGAIN, "the one-shot timer fired again");

    CHECK(timerfd_gettime(tick, &cur) == 0 && cur.it_interval.tv_sec == 0 &&
              cur.it_interval.tv_nsec == 100000000,
          "the period is %.9f s, not 0.1", ts(cur.it_interval));
    CHECK(fdinfo_long(tick, "clockid:") == CLOCK_REALTIME, "clock %ld",
          fdinfo_long(tick, "clockid:"));
    CHECK(fcntl(tick, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    /* Drain, then it must tick again within its period (plus slack). */
    (void)read(tick, &ticks, 8);
    pf.fd = tick;
    CHECK(poll(&pf, 1, 1000) == 1 && read(tick, &ticks, 8) == 8 && ticks >= 1,
          "the periodic timer stopped");

    CHECK(timerfd_gettime(idle, &cur) == 0 && ts(cur.it_value) == 0 && ts(cur.it_interval) == 0,
          "the disarmed timer is armed");
    CHECK(fdinfo_long(idle, "clockid:") == CLOCK_BOOTTIME, "clock %ld",
          fdinfo_long(idle, "clockid:"));
    CHECK((fcntl(idle, F_GETFL) & O_NONBLOCK) == 0, "gained O_NONBLOCK");
    return done();
}
