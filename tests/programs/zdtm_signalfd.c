/* zdtm-style test: signalfds keep their masks (and the blocked mask stays), and read the
 * signals raised after a restart.
 *
 *   zdtm_signalfd GO           nothing pending at the checkpoint
 *   zdtm_signalfd GO pending   a signal queued (blocked, unread) at the checkpoint
 *
 * Prints "ready", waits until the file GO exists, then checks from inside that the state is
 * exactly as before; exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

/* "sigmask:" of /proc/self/fdinfo/FD. */
static unsigned long long fdinfo_mask(int fd) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    unsigned long long v = ~0ULL;
    if (!f)
        return v;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "sigmask:", 8) == 0)
            v = strtoull(line + 8, NULL, 16);
    fclose(f);
    return v;
}

static unsigned long long bit(int sig) { return 1ULL << (sig - 1); }

int main(int argc, char **argv) {
    SETUP(argc == 2 || argc == 3);
    int pending = argc == 3 && strcmp(argv[2], "pending") == 0;
    int rt = SIGRTMIN + 3;
    sigset_t all, two;
    sigemptyset(&all);
    sigaddset(&all, SIGUSR1);
    sigaddset(&all, SIGUSR2);
    sigaddset(&all, rt);
    sigemptyset(&two);
    sigaddset(&two, SIGUSR2);
    SETUP(sigprocmask(SIG_BLOCK, &all, NULL) == 0);
    int s1 = signalfd(-1, &all, SFD_NONBLOCK);
    int s2 = signalfd(-1, &two, SFD_CLOEXEC);
    SETUP(s1 >= 0 && s2 >= 0);
    unsigned long long m1 = fdinfo_mask(s1), m2 = fdinfo_mask(s2);
    SETUP(m1 == (bit(SIGUSR1) | bit(SIGUSR2) | bit(rt)) && m2 == bit(SIGUSR2));
    if (pending) {
        union sigval sv = {.sival_int = 4242};
        SETUP(sigqueue(getpid(), rt, sv) == 0);
    }
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    struct signalfd_siginfo si;
    if (pending) {
        memset(&si, 0, sizeof si);
        CHECK(read(s1, &si, sizeof si) == sizeof si && si.ssi_signo == (unsigned)rt &&
                  si.ssi_int == 4242,
              "the signal queued at the checkpoint is lost (signo %u, value %d)", si.ssi_signo,
              si.ssi_int);
        return done();
    }
    CHECK(fdinfo_mask(s1) == m1, "mask %#llx, was %#llx", fdinfo_mask(s1), m1);
    CHECK(fdinfo_mask(s2) == m2, "mask %#llx, was %#llx", fdinfo_mask(s2), m2);
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    CHECK(sigismember(&now, SIGUSR1) && sigismember(&now, SIGUSR2) && sigismember(&now, rt),
          "the signals are no longer blocked");
    errno = 0;
    CHECK(read(s1, &si, sizeof si) == -1 && errno == EAGAIN, "a signal is pending from nowhere");
    CHECK(fcntl(s1, F_GETFL) & O_NONBLOCK, "lost O_NONBLOCK");
    CHECK(fcntl(s2, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");

    kill(getpid(), SIGUSR1);
    memset(&si, 0, sizeof si);
    CHECK(read(s1, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1 &&
              si.ssi_pid == (unsigned)getpid(),
          "read signal %u from pid %u", si.ssi_signo, si.ssi_pid);
    union sigval sv = {.sival_int = 1234};
    sigqueue(getpid(), rt, sv);
    memset(&si, 0, sizeof si);
    CHECK(read(s1, &si, sizeof si) == sizeof si && si.ssi_signo == (unsigned)rt &&
              si.ssi_int == 1234,
          "read signal %u value %d", si.ssi_signo, si.ssi_int);
    kill(getpid(), SIGUSR2);
    struct pollfd pf = {s2, POLLIN, 0};
    memset(&si, 0, sizeof si);
    CHECK(poll(&pf, 1, 1000) == 1 && read(s2, &si, sizeof si) == sizeof si &&
              si.ssi_signo == SIGUSR2,
          "the second signalfd read signal %u", si.ssi_signo);
    return done();
}
