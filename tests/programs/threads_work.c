/* Four pthreads share work through a mutex and two condition variables, with thread-local
 * (__thread) and thread-specific (pthread_key) data in every result:
 *
 *   threads_work OUTDIR ITEMS BATCH DELAY_US HOLD_BATCH [blockall]
 *
 * The main thread hands out ITEMS items in batches of BATCH; the workers take them in turns
 * (item i goes to worker i % 4, in order), so each worker's thread-local history, and hence
 * the output, does not depend on scheduling. After each batch the main thread prints a
 * checksum of every result so far, then sleeps DELAY_US. At batch HOLD_BATCH (0: never) it
 * waits until OUTDIR/go exists, so a test can act while the program is known to be mid-run.
 *
 * Each worker's pthread_key value is freed by the key's destructor when the thread exits;
 * the destructors' combined state and the workers' pthread_join results are printed at the
 * end. The workers' starting state comes from OUTDIR/seed (read once at start): a test
 * changes that file after the checkpoint, so a "restart" that ran the program again would
 * print other numbers.
 *
 * With "blockall", every worker blocks all signals (sigfillset + pthread_sigmask) when it
 * starts, and checks for each item that its mask still reads back as all blocked.
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

#define WORKERS 4
#define ROUNDS 400000

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER; /* workers wait for their turn */
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER; /* main waits for the batch */
static long next_item, batch_end, done_count;
static int quitting;
static uint64_t *results;
static uint64_t seed = 4242;
static int block_all;
static long mask_errors;

static __thread uint64_t tls_acc = 0x5bd1e9955bd1e995ULL; /* .tdata: initialised TLS */
static __thread uint64_t tls_hist[64];                     /* .tbss */

static pthread_key_t key;
struct specific {
    int worker;
    long items;
    uint64_t state;
};
static uint64_t destructor_sum;
static int destructor_calls;

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static void die(const char *what, int err) {
    fprintf(stderr, "threads_work: %s: %s\n", what, strerror(err));
    exit(1);
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void hold(const char *outdir) {
    char go[4096];
    snprintf(go, sizeof go, "%s/go", outdir);
    /* Bounded: a test that never releases us should not leave us running forever. */
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) sleep_us(1000);
}

static void specific_destroy(void *p) {
    struct specific *s = p;
    pthread_mutex_lock(&mtx);
    /* A sum: the destructors run in whatever order the workers exit. */
    destructor_sum += mix((uint64_t)s->worker, s->state + (uint64_t)s->items);
    destructor_calls++;
    pthread_mutex_unlock(&mtx);
    free(s);
}

static int mask_all_blocked(void) {
    sigset_t cur;
    if (pthread_sigmask(SIG_SETMASK, NULL, &cur) != 0) return 0;
    return sigismember(&cur, SIGUSR1) == 1 && sigismember(&cur, SIGTERM) == 1 &&
           sigismember(&cur, SIGRTMAX - 2) == 1 && sigismember(&cur, SIGRTMIN) == 1;
}

static void *worker(void *arg) {
    int w = (int)(intptr_t)arg;
    if (block_all) {
        sigset_t all;
        sigfillset(&all);
        int e = pthread_sigmask(SIG_BLOCK, &all, NULL);
        if (e) die("pthread_sigmask", e);
    }
    char name[16];
    snprintf(name, sizeof name, "worker-%d", w);
    pthread_setname_np(pthread_self(), name);
    struct specific *s = malloc(sizeof *s);
    if (!s) die("malloc", ENOMEM);
    s->worker = w;
    s->items = 0;
    s->state = mix(seed, (uint64_t)w + 1);
    int e = pthread_setspecific(key, s);
    if (e) die("pthread_setspecific", e);

    pthread_mutex_lock(&mtx);
    for (;;) {
        while (!quitting && !(next_item < batch_end && next_item % WORKERS == w))
            pthread_cond_wait(&work_cv, &mtx);
        if (!(next_item < batch_end && next_item % WORKERS == w)) break; /* quitting */
        long item = next_item++;
        pthread_cond_broadcast(&work_cv); /* the next worker's turn */
        pthread_mutex_unlock(&mtx);

        long bad = block_all && !mask_all_blocked();
        struct specific *sp = pthread_getspecific(key);
        tls_acc = mix(tls_acc, (uint64_t)item);
        tls_hist[item % 64] ^= tls_acc;
        uint64_t r = tls_acc ^ sp->state;
        for (int i = 0; i < ROUNDS; i++) r = mix(r, (uint64_t)i);
        sp->state = mix(sp->state, r);
        sp->items++;
        r ^= tls_hist[(item * 7) % 64];

        pthread_mutex_lock(&mtx);
        results[item] = r;
        mask_errors += bad;
        if (++done_count == batch_end) pthread_cond_signal(&done_cv);
    }
    pthread_mutex_unlock(&mtx);
    uint64_t h = 0;
    for (int i = 0; i < 64; i++) h = mix(h, tls_hist[i]);
    return (void *)(uintptr_t)mix(h, tls_acc);
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: threads_work OUTDIR ITEMS BATCH DELAY_US HOLD_BATCH [blockall]\n");
        return 2;
    }
    const char *outdir = argv[1];
    long items = atol(argv[2]), batch = atol(argv[3]), delay_us = atol(argv[4]);
    long hold_batch = atol(argv[5]);
    block_all = argc == 7 && strcmp(argv[6], "blockall") == 0;

    char seed_path[4096];
    snprintf(seed_path, sizeof seed_path, "%s/seed", outdir);
    FILE *f = fopen(seed_path, "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1) seed = v;
        fclose(f);
    }

    results = calloc((size_t)items, sizeof *results);
    if (!results) die("calloc", ENOMEM);
    int e = pthread_key_create(&key, specific_destroy);
    if (e) die("pthread_key_create", e);
    pthread_t t[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        e = pthread_create(&t[w], NULL, worker, (void *)(intptr_t)w);
        if (e) die("pthread_create", e);
    }

    for (long b = 0; b * batch < items; b++) {
        if (b == hold_batch) hold(outdir);
        pthread_mutex_lock(&mtx);
        batch_end = (b + 1) * batch < items ? (b + 1) * batch : items;
        pthread_cond_broadcast(&work_cv);
        while (done_count < batch_end) pthread_cond_wait(&done_cv, &mtx);
        uint64_t sum = 0;
        for (long i = 0; i < batch_end; i++) sum = mix(sum, results[i]);
        pthread_mutex_unlock(&mtx);
        printf("batch %ld items %ld sum %016llx\n", b, batch_end, (unsigned long long)sum);
        fflush(stdout);
        sleep_us(delay_us);
    }

    pthread_mutex_lock(&mtx);
    quitting = 1;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&mtx);
    uint64_t joined = 0;
    for (int w = 0; w < WORKERS; w++) {
        void *r;
        e = pthread_join(t[w], &r);
        if (e) die("pthread_join", e);
        joined = mix(joined, (uint64_t)(uintptr_t)r);
    }
    printf("joined %016llx destructors %d %016llx\n", (unsigned long long)joined,
           destructor_calls, (unsigned long long)destructor_sum);
    if (block_all)
        printf("workers blocked all signals; mask read back wrong %ld times\n", mask_errors);
    return 0;
}
