/* The soak test's program: three worker threads and the main thread do deterministic work
 * under load, for many checkpoints in a row:
 *
 *   rel_soak OUTDIR BATCHES DELAY_US HOLD_BATCH
 *
 * For each batch the main thread wakes the workers (a condition variable). Each worker
 * allocates, reallocates and frees blocks of pseudo-random sizes (a pool of live blocks per
 * worker, so malloc's per-thread arenas are busy), hashes them, then folds its result into
 * a shared accumulator in turn (worker 0, 1, 2: a ring passed with a second condition
 * variable), writes a 256-byte record to OUTDIR/data.bin with pwrite at a scattered offset,
 * and reports done (a third condition variable). The main thread meanwhile rewrites pages
 * of a 4 MiB buffer and grows a vector with realloc. When all workers are done it prints
 * one line for the batch (flushed), then sleeps DELAY_US, as long as OUTDIR/go does not
 * exist: once it does, the program runs on at full speed (the test creates it when it has
 * taken its checkpoints, so the original and the restarted programs finish quickly).
 *
 * Record (batch b, worker w) goes to record number ((b*3 + w) * 7919) mod (BATCHES*3) of
 * data.bin (a permutation: BATCHES*3 must not be a multiple of 7919). Every record of batch
 * b is written before line b is printed, and none of batch b+1 before it: a test that cuts
 * stdout back to P lines may scribble over the records of batches P+1 and later, and only a
 * program that really resumes rewrites them.
 *
 * Before batch HOLD_BATCH (0: never) it waits until OUTDIR/go exists. The seed comes from
 * OUTDIR/seed (read once at start): a test changes it after the checkpoints, so a restart
 * that ran the program from the beginning would print other numbers. At the end it joins
 * the workers, prints their totals, reads data.bin back and prints its hash. The output
 * depends on nothing but the arguments and the seed, not on scheduling.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3
#define ITEMS 8       /* allocations per worker per batch */
#define POOL 48       /* live blocks per worker */
#define MAXBLOCK (48 * 1024)
#define RECORD 256
#define BUF_BYTES (4u << 20)
#define PAGE 4096

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t ring_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static long cur_batch = -1;
static int turn, done_count, quitting;
static uint64_t ring_acc = 0x243F6A8885A308D3ULL;
static int data_fd;
static long batches;
static const char *outdir;

struct worker {
    pthread_t thread;
    int id;
    uint64_t rng, acc;
    unsigned char *pool[POOL];
    size_t len[POOL];
    long allocs, frees, reallocs;
};
static struct worker workers[WORKERS];

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        h = mix(h, v);
    }
    for (; i < n; i++) h = mix(h, b[i]);
    return h;
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void die(const char *what) {
    fprintf(stderr, "rel_soak: %s: %s\n", what, strerror(errno));
    exit(1);
}

static char *path(const char *name) {
    char *p;
    if (asprintf(&p, "%s/%s", outdir, name) < 0) die("asprintf");
    return p;
}

static void hold(void) {
    char *go = path("go");
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, 0);
    }
    free(go);
}

static void fill(unsigned char *p, size_t from, size_t to, uint64_t r) {
    for (size_t i = from; i < to; i++) p[i] = (unsigned char)(mix(r, i >> 3) >> ((i & 7) * 8));
}

static long record_slot(long b, int w) {
    long n = batches * WORKERS;
    return (long)(((uint64_t)(b * WORKERS + w) * 7919u) % (uint64_t)n);
}

static void work_batch(struct worker *w, long b) {
    for (int k = 0; k < ITEMS; k++) {
        uint64_t r = xorshift(&w->rng);
        int slot = (int)(r % POOL);
        if (w->pool[slot]) {
            size_t n = w->len[slot];
            w->acc = hash_bytes(w->acc, w->pool[slot], n < 512 ? n : 512);
            w->acc = hash_bytes(w->acc, w->pool[slot] + n - (n < 64 ? n : 64), n < 64 ? n : 64);
            free(w->pool[slot]);
            w->frees++;
        }
        size_t len = 64 + (size_t)((r >> 12) % MAXBLOCK);
        unsigned char *p = malloc(len);
        if (!p) die("malloc");
        fill(p, 0, len, r);
        w->pool[slot] = p;
        w->len[slot] = len;
        w->allocs++;
        if ((r >> 40) % 5 == 0) {
            int s2 = (int)((r >> 20) % POOL);
            if (w->pool[s2]) {
                size_t old = w->len[s2];
                size_t nl = 64 + (size_t)((r >> 28) % MAXBLOCK);
                unsigned char *q = realloc(w->pool[s2], nl);
                if (!q) die("realloc");
                if (nl > old) fill(q, old, nl, r ^ 0x55);
                w->pool[s2] = q;
                w->len[s2] = nl;
                w->reallocs++;
            }
        }
        /* The new block may have been the one reallocated: hash it from the pool. */
        size_t n = w->len[slot];
        w->acc = mix(w->acc, hash_bytes((uint64_t)b, w->pool[slot], n < 256 ? n : 256));
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    long seen = -1;
    for (;;) {
        pthread_mutex_lock(&mtx);
        while (!quitting && cur_batch == seen) pthread_cond_wait(&start_cv, &mtx);
        if (quitting) {
            pthread_mutex_unlock(&mtx);
            return 0;
        }
        long b = seen = cur_batch;
        pthread_mutex_unlock(&mtx);

        work_batch(w, b);

        pthread_mutex_lock(&mtx);
        while (turn != w->id) pthread_cond_wait(&ring_cv, &mtx);
        ring_acc = mix(ring_acc, w->acc);
        uint64_t ring = ring_acc;
        turn = (turn + 1) % WORKERS;
        pthread_cond_broadcast(&ring_cv);
        pthread_mutex_unlock(&mtx);

        char rec[RECORD];
        memset(rec, '.', sizeof rec);
        int n = snprintf(rec, sizeof rec, "batch %ld worker %d acc %016llx ring %016llx", b,
                         w->id, (unsigned long long)w->acc, (unsigned long long)ring);
        rec[n] = ' ';
        rec[RECORD - 1] = '\n';
        off_t at = (off_t)record_slot(b, w->id) * RECORD;
        if (pwrite(data_fd, rec, sizeof rec, at) != (ssize_t)sizeof rec) die("pwrite data.bin");

        pthread_mutex_lock(&mtx);
        done_count++;
        pthread_cond_signal(&done_cv);
        pthread_mutex_unlock(&mtx);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: rel_soak OUTDIR BATCHES DELAY_US HOLD_BATCH\n");
        return 2;
    }
    outdir = argv[1];
    batches = atol(argv[2]);
    long delay_us = atol(argv[3]);
    long hold_batch = atol(argv[4]);
    if (batches <= 0 || (batches * WORKERS) % 7919 == 0) {
        fprintf(stderr, "rel_soak: BATCHES*3 must be positive and not a multiple of 7919\n");
        return 2;
    }

    uint64_t seed = 4242;
    char *seed_path = path("seed");
    FILE *sf = fopen(seed_path, "r");
    if (sf) {
        unsigned long long v;
        if (fscanf(sf, "%llu", &v) == 1) seed = v;
        fclose(sf);
    }
    free(seed_path);

    char *data_path = path("data.bin");
    data_fd = open(data_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (data_fd < 0) die("create data.bin");
    free(data_path);

    unsigned char *buf = malloc(BUF_BYTES);
    if (!buf) die("malloc buffer");
    uint64_t ms = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < BUF_BYTES; i += 8) {
        uint64_t v = xorshift(&ms);
        memcpy(buf + i, &v, 8);
    }
    size_t vec_len = 1024;
    uint64_t *vec = calloc(vec_len, sizeof *vec);
    if (!vec) die("calloc");

    for (int i = 0; i < WORKERS; i++) {
        workers[i].id = i;
        workers[i].rng = mix(seed, (uint64_t)i + 1) | 1;
        workers[i].acc = (uint64_t)i;
        if (pthread_create(&workers[i].thread, 0, worker_main, &workers[i]) != 0)
            die("pthread_create");
    }

    setvbuf(stdout, 0, _IOFBF, 1 << 16);
    char *go = path("go");
    int released = 0;
    uint64_t mh = seed;
    for (long b = 0; b < batches; b++) {
        if (hold_batch > 0 && b == hold_batch) hold();
        pthread_mutex_lock(&mtx);
        cur_batch = b;
        done_count = 0;
        turn = 0;
        pthread_cond_broadcast(&start_cv);
        pthread_mutex_unlock(&mtx);

        /* The main thread's own work, while the workers run. */
        uint64_t r = xorshift(&ms);
        for (int k = 0; k < 16; k++) {
            size_t page = (size_t)((r >> (k * 3)) % (BUF_BYTES / PAGE));
            buf[page * PAGE + (size_t)(b + k) % PAGE] ^= (unsigned char)(r >> k);
            mh = hash_bytes(mh, buf + page * PAGE, 256);
        }
        if (b % 64 == 63) {
            vec = realloc(vec, (vec_len * 2) * sizeof *vec);
            if (!vec) die("realloc vector");
            for (size_t i = vec_len; i < vec_len * 2; i++) vec[i] = mix(mh, i);
            vec_len *= 2;
            if (vec_len > (1u << 18)) vec_len = 1024; /* keep it bounded: reuse the front */
        }
        vec[(size_t)r % vec_len] ^= mh;
        mh = mix(mh, vec[(size_t)(r >> 17) % vec_len]);

        pthread_mutex_lock(&mtx);
        while (done_count < WORKERS) pthread_cond_wait(&done_cv, &mtx);
        uint64_t ring = ring_acc;
        pthread_mutex_unlock(&mtx);

        printf("batch %ld ring %016llx main %016llx\n", b, (unsigned long long)ring,
               (unsigned long long)mh);
        fflush(stdout);
        if (delay_us > 0 && !released) {
            released = access(go, F_OK) == 0;
            if (!released) usleep((useconds_t)delay_us);
        }
    }

    pthread_mutex_lock(&mtx);
    quitting = 1;
    pthread_cond_broadcast(&start_cv);
    pthread_mutex_unlock(&mtx);
    for (int i = 0; i < WORKERS; i++) {
        struct worker *w = &workers[i];
        if (pthread_join(w->thread, 0) != 0) die("pthread_join");
        uint64_t ph = w->acc;
        for (int s = 0; s < POOL; s++) {
            if (w->pool[s]) {
                ph = hash_bytes(ph, w->pool[s], w->len[s]);
                free(w->pool[s]);
            }
        }
        printf("worker %d allocs %ld frees %ld reallocs %ld pool %016llx\n", i, w->allocs,
               w->frees, w->reallocs, (unsigned long long)ph);
    }

    size_t data_len = (size_t)batches * WORKERS * RECORD;
    unsigned char *data = malloc(data_len);
    if (!data) die("malloc data");
    if (pread(data_fd, data, data_len, 0) != (ssize_t)data_len) die("read data.bin back");
    printf("data.bin %zu bytes hash %016llx\n", data_len,
           (unsigned long long)hash_bytes(0, data, data_len));
    printf("done %ld batches, main %016llx buffer %016llx\n", batches, (unsigned long long)mh,
           (unsigned long long)hash_bytes(mh, buf, BUF_BYTES));
    fflush(stdout);
    free(data);
    free(go);
    close(data_fd);
    return 0;
}
