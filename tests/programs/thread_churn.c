/* Threads created and joined continuously:
 *
 *   thread_churn OUTDIR STEPS HOLD_STEP
 *
 * Each of STEPS steps creates four threads (two with their own small stacks), joins them
 * and prints a checksum of their results. At step HOLD_STEP, until OUTDIR/go exists, it
 * churns: creates one to four short-lived joinable threads and one detached thread (which
 * posts a semaphore as it ends), waits for all of them, and checks every result, over and
 * over. A test takes checkpoints during the churn; a restored program leaves the churn as
 * soon as it sees the go file, so its output does not depend on how long it churned.
 * A wrong result, or a thread that never ends, is reported on stderr (exit 3; the wait for a
 * detached thread gives up after 60 s).
 *
 * The results start from OUTDIR/seed (read once at start): a test changes that file after
 * the checkpoint, so a program started again would print other numbers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed = 4242;
static __thread uint64_t tls_v = 7;
static sem_t detached_done;

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static void die(const char *what, int err) {
    fprintf(stderr, "thread_churn: %s: %s\n", what, strerror(err));
    exit(1);
}

/* What a thread computes for `arg`; the main thread computes the same to check it. */
static uint64_t compute(uint64_t arg, int rounds) {
    uint64_t h = mix(seed, arg);
    for (int i = 0; i < rounds; i++) h = mix(h, (uint64_t)i);
    return h;
}

struct job {
    uint64_t arg;
    int rounds;
    uint64_t result;
};

static void *run_job(void *p) {
    struct job *j = p;
    tls_v = mix(tls_v, j->arg); /* thread-local: starts at 7 in every thread */
    j->result = compute(j->arg, j->rounds) ^ tls_v;
    return (void *)(uintptr_t)j->result;
}

static void *run_detached(void *p) {
    run_job(p);
    sem_post(&detached_done);
    return NULL;
}

static uint64_t expected(const struct job *j) {
    return compute(j->arg, j->rounds) ^ mix(7, j->arg);
}

static void spawn(pthread_t *t, struct job *j, int own_stack, int detached) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (own_stack) pthread_attr_setstacksize(&attr, 64 * 1024);
    if (detached) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(t, &attr, detached ? run_detached : run_job, j);
    if (e) die("pthread_create", e);
    pthread_attr_destroy(&attr);
}

static void check(const char *what, long n, int i, const struct job *j, uint64_t got) {
    if (got != expected(j)) {
        fprintf(stderr, "thread_churn: %s %ld thread %d: got %016llx, expected %016llx\n", what, n,
                i, (unsigned long long)got, (unsigned long long)expected(j));
        exit(3);
    }
}

static void churn(const char *outdir) {
    char go[4096];
    snprintf(go, sizeof go, "%s/go", outdir);
    static struct job jobs[5];
    /* Bounded: a test that never releases us should not leave us running forever. */
    time_t give_up = time(NULL) + 600;
    for (long n = 0; access(go, F_OK) != 0 && time(NULL) < give_up; n++) {
        int k = 1 + (int)(n % 4);
        pthread_t t[5];
        for (int i = 0; i <= k; i++) {
            jobs[i].arg = (uint64_t)n * 8 + (uint64_t)i + 1000000;
            jobs[i].rounds = 2000 + i * 500;
            jobs[i].result = 0;
            spawn(&t[i], &jobs[i], i % 2, i == k);
        }
        for (int i = 0; i < k; i++) {
            void *r;
            int e = pthread_join(t[i], &r);
            if (e) die("pthread_join", e);
            check("churn", n, i, &jobs[i], (uint64_t)(uintptr_t)r);
        }
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 60;
        while (sem_timedwait(&detached_done, &deadline) != 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "thread_churn: churn %ld: the detached thread did not end: %s\n", n,
                    strerror(errno));
            exit(3);
        }
        check("churn (detached)", n, k, &jobs[k], jobs[k].result);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: thread_churn OUTDIR STEPS HOLD_STEP\n");
        return 2;
    }
    const char *outdir = argv[1];
    long steps = atol(argv[2]), hold_step = atol(argv[3]);
    char seed_path[4096];
    snprintf(seed_path, sizeof seed_path, "%s/seed", outdir);
    FILE *f = fopen(seed_path, "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1) seed = v;
        fclose(f);
    }
    sem_init(&detached_done, 0, 0);

    uint64_t sum = 0;
    for (long s = 0; s < steps; s++) {
        if (s == hold_step) churn(outdir);
        struct job jobs[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            jobs[i].arg = (uint64_t)s * 4 + (uint64_t)i;
            jobs[i].rounds = 20000;
            spawn(&t[i], &jobs[i], i % 2, 0);
        }
        for (int i = 0; i < 4; i++) {
            void *r;
            int e = pthread_join(t[i], &r);
            if (e) die("pthread_join", e);
            check("step", s, i, &jobs[i], (uint64_t)(uintptr_t)r);
            sum = mix(sum, (uint64_t)(uintptr_t)r);
        }
        printf("step %ld %016llx\n", s, (unsigned long long)sum);
        fflush(stdout);
    }
    printf("done %ld %016llx\n", steps, (unsigned long long)sum);
    return 0;
}
