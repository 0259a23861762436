/* A thread that blocks every signal with a raw rt_sigprocmask system call, which no
 * interposed libc function can see, so a checkpoint cannot stop it:
 *
 *   threads_stubborn OUTDIR STEPS HOLD1 UNBLOCK HOLD2
 *
 * Thread "fp-stubborn" blocks all signals with syscall(SYS_rt_sigprocmask, ...), then does
 * the jobs the main thread hands it (waiting for them in pthread_cond_wait, signals still
 * blocked). Thread "fp-normal" does the same with an ordinary mask. The main thread prints
 * one line per step with both threads' results. At step HOLD1 it waits until OUTDIR/go
 * exists; at step UNBLOCK the stubborn thread restores its old mask with the raw call again
 * (and reports what it had saved); at step HOLD2 the main thread waits until OUTDIR/go2
 * exists. Results start from OUTDIR/seed (read once at start).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static uint64_t seed = 4242;

struct worker {
    const char *name;
    int raw_block;
    long job;      /* the step to do; 0: none; -1: quit */
    long done;     /* the last step done */
    int unblock;   /* stubborn: restore the old mask before the next job */
    uint64_t result;
    uint64_t state;
    int unblocked; /* 1 once the mask was restored */
};

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static void die(const char *what, int err) {
    fprintf(stderr, "threads_stubborn: %s: %s\n", what, strerror(err));
    exit(1);
}

static void *run(void *p) {
    struct worker *w = p;
    pthread_setname_np(pthread_self(), w->name);
    uint64_t old = 0;
    if (w->raw_block) {
        uint64_t all = ~0ULL;
        /* The kernel's sigset is 8 bytes; glibc's sigset_t is bigger, so no libc call. */
        if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, &old, 8) != 0) die("rt_sigprocmask", errno);
    }
    pthread_mutex_lock(&mtx);
    for (;;) {
        while (w->job == 0) pthread_cond_wait(&job_cv, &mtx);
        if (w->job < 0) break;
        long step = w->job;
        if (w->unblock && !w->unblocked) {
            if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8) != 0)
                die("rt_sigprocmask", errno);
            w->unblocked = 1;
        }
        pthread_mutex_unlock(&mtx);
        uint64_t h = mix(w->state, (uint64_t)step);
        for (int i = 0; i < 200000; i++) h = mix(h, (uint64_t)i);
        pthread_mutex_lock(&mtx);
        w->state = h;
        w->result = h;
        w->done = step;
        w->job = 0;
        pthread_cond_broadcast(&done_cv);
    }
    pthread_mutex_unlock(&mtx);
    return NULL;
}

static void hold(const char *outdir, const char *file) {
    char go[4096];
    snprintf(go, sizeof go, "%s/%s", outdir, file);
    /* Bounded: a test that never releases us should not leave us running forever. */
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: threads_stubborn OUTDIR STEPS HOLD1 UNBLOCK HOLD2\n");
        return 2;
    }
    const char *outdir = argv[1];
    long steps = atol(argv[2]), hold1 = atol(argv[3]), unblock = atol(argv[4]);
    long hold2 = atol(argv[5]);
    char path[4096];
    snprintf(path, sizeof path, "%s/seed", outdir);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1) seed = v;
        fclose(f);
    }
    struct worker ws[2] = {
        {.name = "fp-stubborn", .raw_block = 1, .state = mix(seed, 1)},
        {.name = "fp-normal", .raw_block = 0, .state = mix(seed, 2)},
    };
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        int e = pthread_create(&t[i], NULL, run, &ws[i]);
        if (e) die("pthread_create", e);
    }
    for (long s = 1; s <= steps; s++) {
        if (s == hold1) hold(outdir, "go");
        if (s == hold2) hold(outdir, "go2");
        pthread_mutex_lock(&mtx);
        if (s == unblock) ws[0].unblock = 1;
        for (int i = 0; i < 2; i++) ws[i].job = s;
        pthread_cond_broadcast(&job_cv);
        while (ws[0].done != s || ws[1].done != s) pthread_cond_wait(&done_cv, &mtx);
        printf("step %ld %016llx %016llx%s\n", s, (unsigned long long)ws[0].result,
               (unsigned long long)ws[1].result, ws[0].unblocked ? " (unblocked)" : "");
        pthread_mutex_unlock(&mtx);
        fflush(stdout);
        struct timespec ts = {0, 5 * 1000 * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    pthread_mutex_lock(&mtx);
    for (int i = 0; i < 2; i++) ws[i].job = -1;
    pthread_cond_broadcast(&job_cv);
    pthread_mutex_unlock(&mtx);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    printf("done %ld\n", steps);
    return 0;
}
