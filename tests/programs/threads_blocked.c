/* Threads that sit blocked in the kernel, so that a checkpoint catches each of them there:
 *
 *   threads_blocked OUTDIR
 *
 *   fp-futex  pthread_cond_wait until the main thread releases it;
 *   fp-read   read(2) of 5 bytes from stdin (a pipe the test writes "AAAA\nBBBB\n" to);
 *   fp-poll   poll(2) on stdin; once readable and fp-read has its 5 bytes, reads the other 5;
 *   fp-sleep  nanosleep(2) in 20 ms naps until released (EINTR: sleeps the remainder);
 *   fp-pipe   read(2) on an internal pipe (descriptor 40; the write end is 41) that the main
 *             thread writes one byte to once released. This version restores such a pipe as
 *             /dev/null: after a restart the read ends with EOF instead, and the thread
 *             carries on the same way.
 *
 * The main thread prints "ready" once every thread is about to block, then waits until
 * OUTDIR/go exists, releases them, joins them and prints what each computed. Every thread
 * computes from OUTDIR/seed (read at start) and state it kept on its stack while blocked,
 * reads back its own name, and checks that glibc's idea of its TID is valid
 * (pthread_kill(self, 0)). Interrupted calls are retried on EINTR, as robust programs do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 5
#define PIPE_R 40
#define PIPE_W 41

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int ready, released, read_done;
static uint64_t seed = 4242;
static char report[THREADS][200];

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

static uint64_t chain(uint64_t h, int rounds) {
    for (int i = 0; i < rounds; i++) h = mix(h, (uint64_t)i);
    return h;
}

static void die(const char *what, int err) {
    fprintf(stderr, "threads_blocked: %s: %s\n", what, strerror(err));
    exit(1);
}

/* Every thread calls this just before it blocks. */
static void arrive(const char *name) {
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&mtx);
    ready++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

static void finish(int slot, const char *what, uint64_t local) {
    char name[16] = "?";
    pthread_getname_np(pthread_self(), name, sizeof name);
    int tid_ok = pthread_kill(pthread_self(), 0) == 0;
    snprintf(report[slot], sizeof report[slot], "%s %016llx name %s tid %s", what,
             (unsigned long long)chain(local, 100000), name, tid_ok ? "ok" : "STALE");
}

/* Reads exactly n bytes, retrying on EINTR; returns the bytes read (less only at EOF). */
static size_t read_exact(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read", errno);
        if (r == 0) break;
        got += (size_t)r;
    }
    return got;
}

static uint64_t hash_str(uint64_t h, const char *s) {
    for (; *s; s++) h = mix(h, (unsigned char)*s);
    return h;
}

static void *futex_thread(void *arg) {
    (void)arg;
    volatile uint64_t local = mix(seed, 1);
    arrive("fp-futex");
    pthread_mutex_lock(&mtx);
    while (!released) pthread_cond_wait(&cv, &mtx);
    pthread_mutex_unlock(&mtx);
    finish(0, "futex thread:", local);
    return NULL;
}

static void *read_thread(void *arg) {
    (void)arg;
    volatile uint64_t local = mix(seed, 2);
    char buf[6] = {0};
    arrive("fp-read");
    size_t n = read_exact(0, buf, 5);
    pthread_mutex_lock(&mtx);
    read_done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
    buf[strcspn(buf, "\n")] = 0;
    char what[64];
    snprintf(what, sizeof what, "read thread: %zu bytes \"%s\"", n, buf);
    finish(1, what, hash_str(local, buf));
    return NULL;
}

static void *poll_thread(void *arg) {
    (void)arg;
    volatile uint64_t local = mix(seed, 3);
    arrive("fp-poll");
    struct pollfd p = {.fd = 0, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("poll", errno);
        if (r > 0) break;
    }
    short revents = p.revents;
    /* The first 5 bytes are fp-read's. */
    pthread_mutex_lock(&mtx);
    while (!read_done) pthread_cond_wait(&cv, &mtx);
    pthread_mutex_unlock(&mtx);
    char buf[6] = {0};
    size_t n = read_exact(0, buf, 5);
    buf[strcspn(buf, "\n")] = 0;
    char what[80];
    snprintf(what, sizeof what, "poll thread: POLLIN %d, then %zu bytes \"%s\"",
             (revents & POLLIN) != 0, n, buf);
    finish(2, what, hash_str(local, buf));
    return NULL;
}

static void *sleep_thread(void *arg) {
    (void)arg;
    volatile uint64_t local = mix(seed, 4);
    arrive("fp-sleep");
    while (!__atomic_load_n(&released, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    finish(3, "sleep thread:", local);
    return NULL;
}

static void *pipe_thread(void *arg) {
    (void)arg;
    volatile uint64_t local = mix(seed, 5);
    arrive("fp-pipe");
    char c;
    ssize_t r;
    do r = read(PIPE_R, &c, 1);
    while (r < 0 && errno == EINTR);
    if (r < 0) die("read pipe", errno);
    /* One byte (uninterrupted) or EOF (restored as /dev/null): the thread goes on alike. */
    finish(4, "pipe thread: woke", local);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: threads_blocked OUTDIR\n");
        return 2;
    }
    const char *outdir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/seed", outdir);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1) seed = v;
        fclose(f);
    }
    int p[2];
    if (pipe(p) != 0) die("pipe", errno);
    if (dup2(p[0], PIPE_R) < 0 || dup2(p[1], PIPE_W) < 0) die("dup2", errno);
    close(p[0]);
    close(p[1]);

    void *(*fns[THREADS])(void *) = {futex_thread, read_thread, poll_thread, sleep_thread,
                                     pipe_thread};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        int e = pthread_create(&t[i], NULL, fns[i], NULL);
        if (e) die("pthread_create", e);
    }
    pthread_mutex_lock(&mtx);
    while (ready < THREADS) pthread_cond_wait(&cv, &mtx);
    pthread_mutex_unlock(&mtx);
    printf("ready: %d threads\n", THREADS);
    fflush(stdout);

    snprintf(path, sizeof path, "%s/go", outdir);
    /* Bounded: a test that never releases us should not leave us running forever. */
    for (int i = 0; i < 600000 && access(path, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    pthread_mutex_lock(&mtx);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
    if (write(PIPE_W, "x", 1) != 1) die("write pipe", errno);

    for (int i = 0; i < THREADS; i++) {
        int e = pthread_join(t[i], NULL);
        if (e) die("pthread_join", e);
        printf("%s\n", report[i]);
    }
    printf("done\n");
    return 0;
}
