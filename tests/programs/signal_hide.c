/* A program that tries to take the checkpoint signal (SIGRTMAX-2, 62) for itself:
 *
 *   signal_hide OUTDIR STEPS HOLD_STEP
 *
 * At start it installs its own handler for 62 with sigaction (and again with signal()),
 * blocks 62 with sigprocmask, and starts a thread that blocks 62 and SIGUSR1 with
 * pthread_sigmask and then waits in sigwait for SIGUSR1. It prints what it reads back:
 * its own handler, 62 blocked. Then one line per step; at HOLD_STEP it waits until
 * OUTDIR/go exists, reads the handler and the mask back again, sends SIGUSR1 to the thread
 * and joins it. At the end it says how often its handler for 62 ran (never: nothing but a
 * checkpoint sends it that signal). Results start from OUTDIR/seed (read once at start).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIG 62

static volatile sig_atomic_t handler_calls;
static uint64_t seed = 4242;

static void on_sig(int sig) {
    (void)sig;
    handler_calls++;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static void die(const char *what, int err) {
    fprintf(stderr, "signal_hide: %s: %s\n", what, strerror(err));
    exit(1);
}

static const char *yes(int b) {
    return b ? "yes" : "NO";
}

static void read_back(const char *when) {
    struct sigaction cur;
    if (sigaction(SIG, NULL, &cur) != 0) die("sigaction", errno);
    sigset_t mask;
    if (sigprocmask(SIG_SETMASK, NULL, &mask) != 0) die("sigprocmask", errno);
    printf("%s: handler for %d is ours: %s; %d blocked: %s\n", when, SIG,
           yes(cur.sa_handler == on_sig), SIG, yes(sigismember(&mask, SIG) == 1));
}

static void *waiter(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "fp-sigwait");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIG);
    sigaddset(&set, SIGUSR1);
    int e = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (e) die("pthread_sigmask", e);
    sigset_t wait_for;
    sigemptyset(&wait_for);
    sigaddset(&wait_for, SIGUSR1);
    int sig = 0;
    e = sigwait(&wait_for, &sig);
    if (e) die("sigwait", e);
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    static char report[128];
    snprintf(report, sizeof report, "sigwait returned %d; thread mask has %d: %s, SIGUSR1: %s", sig,
             SIG, yes(sigismember(&mask, SIG) == 1), yes(sigismember(&mask, SIGUSR1) == 1));
    return report;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: signal_hide OUTDIR STEPS HOLD_STEP\n");
        return 2;
    }
    const char *outdir = argv[1];
    long steps = atol(argv[2]), hold_step = atol(argv[3]);
    char path[4096];
    snprintf(path, sizeof path, "%s/seed", outdir);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1) seed = v;
        fclose(f);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIG, &sa, NULL) != 0) die("sigaction", errno);
    void (*prev)(int) = signal(SIG, on_sig);
    printf("signal(%d) returned our handler as the previous one: %s\n", SIG, yes(prev == on_sig));
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0) die("sigprocmask", errno);
    read_back("at start");

    pthread_t t;
    int e = pthread_create(&t, NULL, waiter, NULL);
    if (e) die("pthread_create", e);

    uint64_t h = seed;
    for (long s = 1; s <= steps; s++) {
        if (s == hold_step) {
            snprintf(path, sizeof path, "%s/go", outdir);
            /* Bounded: a test that never releases us should not leave us running forever. */
            for (int i = 0; i < 600000 && access(path, F_OK) != 0; i++) {
                struct timespec ts = {0, 1000000};
                while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
                }
            }
            read_back("after the hold");
            e = pthread_kill(t, SIGUSR1);
            if (e) die("pthread_kill", e);
            void *report;
            e = pthread_join(t, &report);
            if (e) die("pthread_join", e);
            printf("%s\n", (char *)report);
        }
        for (int i = 0; i < 100000; i++) h = mix(h, (uint64_t)(s * 100000 + i));
        printf("step %ld %016llx\n", s, (unsigned long long)h);
        fflush(stdout);
        struct timespec ts = {0, 5 * 1000 * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    printf("our handler for %d ran %d times\n", SIG, (int)handler_calls);
    return 0;
}
