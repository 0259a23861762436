/* zdtm-style test: eventfds keep their counter, their semaphore mode and their flags.
 *
 *   zdtm_eventfd GO
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
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

int main(int argc, char **argv) {
    SETUP(argc == 2);
    int counter = eventfd(42, EFD_NONBLOCK);
    int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
    int zero = eventfd(0, 0);
    int full = eventfd(0, EFD_NONBLOCK);
    SETUP(counter >= 0 && sem >= 0 && zero >= 0 && full >= 0);
    uint64_t max = UINT64_MAX - 1;
    SETUP(write(full, &max, 8) == 8);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    uint64_t v = 0;
    CHECK(read(counter, &v, 8) == 8 && v == 42, "the counter reads %" PRIu64 ", not 42", v);
    errno = 0;
    CHECK(read(counter, &v, 8) == -1 && errno == EAGAIN, "a drained counter must say EAGAIN");
    CHECK(fcntl(counter, F_GETFL) & O_NONBLOCK, "lost O_NONBLOCK");
    CHECK((fcntl(counter, F_GETFD) & FD_CLOEXEC) == 0, "gained FD_CLOEXEC");

    for (int i = 0; i < 3; i++) {
        v = 0;
        CHECK(read(sem, &v, 8) == 8 && v == 1, "semaphore read %d gave %" PRIu64 ", not 1", i, v);
    }
    errno = 0;
    CHECK(read(sem, &v, 8) == -1 && errno == EAGAIN, "the semaphore held more than 3");
    CHECK(fcntl(sem, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");

    struct pollfd pf = {zero, POLLIN, 0};
    CHECK(poll(&pf, 1, 0) == 0, "an eventfd at 0 is readable");
    CHECK((fcntl(zero, F_GETFL) & O_NONBLOCK) == 0, "gained O_NONBLOCK");
    uint64_t five = 5;
    CHECK(write(zero, &five, 8) == 8 && read(zero, &v, 8) == 8 && v == 5,
          "does not count any more: %" PRIu64, v);

    uint64_t one = 1;
    errno = 0;
    CHECK(write(full, &one, 8) == -1 && errno == EAGAIN, "a full counter took one more");
    CHECK(read(full, &v, 8) == 8 && v == max, "the full counter reads %" PRIu64, v);
    return done();
}
