/* zdtm-style test: interval timers (setitimer) and POSIX timers (timer_create) survive a
 * restart with their ids, clocks, periods and remaining times, and keep firing.
 *
 *   zdtm_timers GO
 *
 * Prints "ready ids ...", waits until the file GO exists, then watches the timers for a
 * while (on the clock: the signals cut sleeps short) and checks them. Exit 0 and "PASS" only
 * if all is as before, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static volatile sig_atomic_t alarms, vtalarms, rt_hits, rt_bad, once_hits;
static volatile int rt_timerid = -1;
static void on_alrm(int s) { (void)s; alarms++; }
static void on_vtalrm(int s) { (void)s; vtalarms++; }
static void on_rt(int s, siginfo_t *si, void *u) {
    (void)s;
    (void)u;
    if (si->si_code == SI_TIMER && si->si_value.sival_int == 77 && si->si_timerid == rt_timerid)
        rt_hits++;
    else
        rt_bad++;
}
static void on_usr1(int s, siginfo_t *si, void *u) {
    (void)s;
    (void)u;
    if (si->si_code == SI_TIMER && si->si_value.sival_int == 99)
        once_hits++;
}

static double tsd(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }
/* User CPU time: what ITIMER_VIRTUAL counts (a loop of clock_gettime calls for the process
 * CPU clock would spend most of its time in the kernel, which that timer does not see). */
static double user_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

/* Pure user-space work between two looks at the clocks. */
static volatile unsigned long spin_sink;
static void spin_user(void) {
    for (unsigned long i = 0; i < 2000000; i++)
        spin_sink += i;
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    signal(SIGALRM, on_alrm);
    signal(SIGVTALRM, on_vtalrm);
    struct sigaction sa = {0};
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_rt;
    SETUP(sigaction(SIGRTMIN + 1, &sa, NULL) == 0);
    sa.sa_sigaction = on_usr1;
    SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);

    timer_t quiet, tick, once, idle;
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_NONE;
    SETUP(timer_create(CLOCK_MONOTONIC, &ev, &quiet) == 0);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 1;
    ev.sigev_value.sival_int = 77;
    SETUP(timer_create(CLOCK_MONOTONIC, &ev, &tick) == 0);
    rt_timerid = (int)(intptr_t)tick;
    ev.sigev_signo = SIGUSR1;
    ev.sigev_value.sival_int = 99;
    SETUP(timer_create(CLOCK_REALTIME, &ev, &once) == 0);
    ev.sigev_signo = SIGUSR2;
    SETUP(timer_create(CLOCK_BOOTTIME, &ev, &idle) == 0);

    struct itimerspec q = {{0, 0}, {30, 0}}, t = {{0, 100000000}, {0, 100000000}},
                      o = {{0, 0}, {2, 500000000}};
    SETUP(timer_settime(quiet, 0, &q, NULL) == 0);
    SETUP(timer_settime(tick, 0, &t, NULL) == 0);
    SETUP(timer_settime(once, 0, &o, NULL) == 0);
    struct itimerval real = {{0, 200000}, {0, 200000}}, virt = {{0, 50000}, {0, 50000}};
    SETUP(setitimer(ITIMER_REAL, &real, NULL) == 0);
    SETUP(setitimer(ITIMER_VIRTUAL, &virt, NULL) == 0);
    printf("ready ids %d %d %d %d\n", (int)(intptr_t)quiet, (int)(intptr_t)tick,
           (int)(intptr_t)once, (int)(intptr_t)idle);
    fflush(stdout);

    wait_go(argv[1]);
    double go = mono();
    int a0 = alarms, r0 = rt_hits, once0 = once_hits;

    struct itimerspec cur;
    CHECK(timer_gettime(quiet, &cur) == 0 && tsd(cur.it_value) > 0 && tsd(cur.it_value) <= 30,
          "the SIGEV_NONE timer (id %d) is not armed for at most 30 s: %.3f",
          (int)(intptr_t)quiet, tsd(cur.it_value));
    CHECK(timer_gettime(tick, &cur) == 0 && cur.it_interval.tv_sec == 0 &&
              cur.it_interval.tv_nsec == 100000000,
          "the periodic timer (id %d) has period %.9f, not 0.1", (int)(intptr_t)tick,
          tsd(cur.it_interval));
    CHECK(once0 == 1 ||
              (timer_gettime(once, &cur) == 0 && tsd(cur.it_value) > 0 &&
               tsd(cur.it_value) <= 2.5 && tsd(cur.it_interval) == 0),
          "the one-shot timer (id %d) is not armed for at most 2.5 s: %.3f",
          (int)(intptr_t)once, tsd(cur.it_value));
    CHECK(timer_gettime(idle, &cur) == 0 && tsd(cur.it_value) == 0,
          "the disarmed timer (id %d) is armed, or gone", (int)(intptr_t)idle);
    struct itimerval iv;
    CHECK(getitimer(ITIMER_REAL, &iv) == 0 && iv.it_interval.tv_sec == 0 &&
              iv.it_interval.tv_usec == 200000 && iv.it_value.tv_usec + iv.it_value.tv_sec > 0,
          "ITIMER_REAL: period %ld us, value %ld us", (long)iv.it_interval.tv_usec,
          (long)iv.it_value.tv_usec);
    CHECK(getitimer(ITIMER_VIRTUAL, &iv) == 0 && iv.it_interval.tv_sec == 0 &&
              iv.it_interval.tv_usec == 50000,
          "ITIMER_VIRTUAL: period %ld us", (long)iv.it_interval.tv_usec);

    /* Watch for 3 s of wall time (the one-shot fires within 2.5 s of the checkpoint). */
    while (mono() < go + 3.0)
        usleep(10000);
    CHECK(alarms - a0 >= 5, "ITIMER_REAL fired %d times in 3 s, not about 15", alarms - a0);
    CHECK(rt_hits - r0 >= 10, "the periodic POSIX timer fired %d times in 3 s, not about 30",
          rt_hits - r0);
    CHECK(rt_bad == 0, "%d signals from the periodic timer came with a wrong value or id", rt_bad);
    CHECK(once_hits == 1, "the one-shot POSIX timer fired %d times, not once", once_hits);
    /* ITIMER_VIRTUAL counts user CPU time: spend 0.5 s of it (at most 20 s of wall time). */
    int v0 = vtalarms;
    double c0 = user_cpu(), end = mono() + 20;
    while (user_cpu() < c0 + 0.5 && mono() < end)
        spin_user();
    CHECK(vtalarms - v0 >= 3, "ITIMER_VIRTUAL fired %d times in 0.5 s of user CPU, not about 10",
          vtalarms - v0);
    return done();
}
