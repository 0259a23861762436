/*
 * workload: holds N MiB of touched memory with a chosen pattern and measures its own
 * largest stall, for forkpoint's benchmark (benches/run.sh).
 *
 *   workload MIB PATTERN [DUMP_FILE|-] [EXTRA_THREADS] [WRITE_MIB_PER_S]
 *     PATTERN: text (compressible, text-like), random, sparse (1 page in 64 touched), zero
 *              (every page touched, all bytes zero)
 *     DUMP_FILE: the buffer is also written there (the bytes zstd is compared on); "-": none
 *     EXTRA_THREADS: extra threads that keep writing to the buffer (default 0)
 *     WRITE_MIB_PER_S: how fast the main loop rewrites the buffer, in MiB of distinct pages
 *              per second (one store per page); 0: it only reads the clock; default or "-":
 *              as fast as it can (64 stores per iteration, the whole buffer every few ms)
 *
 * Output (line-buffered stdout):
 *   ready PID                     once the memory is filled (and dumped)
 *   tick N T                      every 100 ms; T is CLOCK_REALTIME in ns. A tick is also
 *                                 printed at once when the loop notices a jump of the clock
 *                                 (a gap of 10 ms or more, or the clock going back): after a
 *                                 restart the first loop iteration reports, so "restart until
 *                                 the next tick" is the restart's own time, not up to 100 ms.
 *   stall_us X loops L us E minflt F at_us A
 *                                 on SIGUSR1: X is the largest gap between two iterations of
 *                                 the main loop since the last report (it ended A us after
 *                                 the last report), L the iterations done
 *                                 in the E microseconds since then (the loop's throughput),
 *                                 F the minor page faults taken since then (copy-on-write).
 *                                 All counters restart at each report.
 *   fork_us X                     on SIGUSR2: a bare fork() (the child exits at once) took X
 *                                 microseconds in the parent: the baseline a forked
 *                                 checkpoint's pause is compared with.
 * SIGTERM ends it.
 *
 * The main loop keeps writing to the buffer (64 stores per iteration, 7 pages apart, so it
 * sweeps the whole buffer within milliseconds) like a program that rewrites its memory: while
 * a checkpoint's writer holds a copy-on-write snapshot, every page it rewrites costs it a
 * copy. Stores respect the pattern: `sparse` writes only its touched pages, `zero` stores
 * zeros, so the memory keeps the shape the pattern names.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_report, want_fork, want_stop;
static void on_usr1(int s) { (void)s; want_report = 1; }
static void on_usr2(int s) { (void)s; want_fork = 1; }
static void on_term(int s) { (void)s; want_stop = 1; }

#define PAGE 4096u
#define SPARSE_EVERY 64u

static unsigned char *g_buf;
static size_t g_pages;       /* pages that the loop may write */
static size_t g_page_step;   /* 1, or SPARSE_EVERY for sparse */
static int g_zero;

/* One store into the buffer, keeping the pattern's shape; *cur advances 7 writable pages. */
static inline void touch(size_t *cur) {
    size_t page = *cur % g_pages;
    size_t off = (*cur * 64) & (PAGE - 1);
    volatile unsigned char *p = g_buf + page * g_page_step * PAGE + off;
    if (g_zero) *p = 0;
    else *p ^= 1;
    *cur = page + 7;
}

static void *toucher(void *arg) {
    size_t cur = (size_t)arg * 131;
    while (!want_stop) {
        for (int k = 0; k < 64; k++) touch(&cur);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static uint64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}
static uint64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static long minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: workload MIB text|random|sparse|zero [DUMP_FILE|-] [EXTRA_THREADS]\n");
        return 2;
    }
    size_t len = (size_t)atol(argv[1]) << 20;
    const char *pat = argv[2];
    if (len < SPARSE_EVERY * PAGE) { fprintf(stderr, "workload: MIB must be at least 1\n"); return 2; }
    unsigned char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    static const char *words[] = {"checkpoint", "restart", "fork", "image", "page", "the", "of", "memory",
                                  "process", "kernel", "and", "zstd", "chunk", "signal", "thread", "a"};
    g_pages = len / PAGE;
    g_page_step = 1;
    if (!strcmp(pat, "text")) {
        size_t i = 0;
        while (i < len) {
            const char *w = words[next() & 15];
            size_t n = strlen(w);
            for (size_t k = 0; k < n && i < len; k++) buf[i++] = w[k];
            if (i < len) buf[i++] = (next() & 7) ? ' ' : '\n';
        }
    } else if (!strcmp(pat, "random")) {
        for (size_t i = 0; i + 8 <= len; i += 8) { uint64_t v = next(); memcpy(buf + i, &v, 8); }
    } else if (!strcmp(pat, "sparse")) {
        for (size_t p = 0; p < len; p += SPARSE_EVERY * PAGE)
            for (size_t k = 0; k < PAGE; k += 8) { uint64_t v = next(); memcpy(buf + p + k, &v, 8); }
        g_pages = len / PAGE / SPARSE_EVERY;
        g_page_step = SPARSE_EVERY;
    } else if (!strcmp(pat, "zero")) {
        for (size_t i = 0; i < len; i += PAGE) ((volatile unsigned char *)buf)[i] = 0;
        g_zero = 1;
    } else { fprintf(stderr, "unknown pattern %s\n", pat); return 2; }
    if (argc > 3 && strcmp(argv[3], "-")) {
        /* Untouched pages of `sparse` are written from a zero page, not read from the buffer:
         * reading them would map the zero page there, and they would no longer be untouched. */
        static const unsigned char zero_page[PAGE];
        FILE *f = fopen(argv[3], "w");
        int ok = f != NULL;
        for (size_t p = 0; ok && p < len; p += PAGE) {
            int touched = g_page_step == 1 || (p / PAGE) % SPARSE_EVERY == 0;
            ok = fwrite(touched ? buf + p : zero_page, 1, PAGE, f) == PAGE;
        }
        if (!ok || fclose(f)) { perror("dump"); return 1; }
    }
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_buf = buf;
    int nthreads = argc > 4 ? atoi(argv[4]) : 0;
    for (long t = 0; t < nthreads; t++) {
        pthread_t th;
        pthread_create(&th, NULL, toucher, (void *)t);
    }
    /* Stores allowed per ns of run time, or < 0 for no limit. */
    double rate = argc > 5 && strcmp(argv[5], "-") ? atof(argv[5]) * (1048576.0 / PAGE) / 1e9 : -1;
    printf("ready %d\n", getpid());
    uint64_t last = now_ns(), start_tick = last, max_gap = 0, max_at = last, tick = 0;
    uint64_t report_t = last, loops = 0, stores = 0, rate_t0 = last;
    long report_flt = minflt();
    size_t cur = 0;
    while (!want_stop) {
        /* A little work per iteration, writing memory like a running program. */
        if (rate < 0) {
            for (int k = 0; k < 64; k++) touch(&cur);
        } else {
            uint64_t allowed = (uint64_t)((double)(now_ns() - rate_t0) * rate);
            for (int k = 0; k < 64 && stores < allowed; k++, stores++) touch(&cur);
            if (allowed > stores + 4096) stores = allowed - 4096; /* after a stall, no burst */
        }
        loops++;
        uint64_t t = now_ns();
        int jumped = t < last || t - last >= 10000000ull;
        if (t >= last && t - last > max_gap) { max_gap = t - last; max_at = t; }
        last = t;
        if (jumped || t - start_tick >= 100000000ull) {
            start_tick = t;
            printf("tick %lu %lu\n", (unsigned long)++tick, (unsigned long)clock_ns(CLOCK_REALTIME));
        }
        if (want_report) {
            want_report = 0;
            long f = minflt();
            printf("stall_us %lu loops %lu us %lu minflt %ld at_us %lu\n", (unsigned long)(max_gap / 1000),
                   (unsigned long)loops, (unsigned long)((t - report_t) / 1000), f - report_flt,
                   (unsigned long)(max_gap ? (max_at - report_t) / 1000 : 0));
            max_gap = 0;
            loops = 0;
            report_flt = f;
            last = report_t = now_ns();
        }
        if (want_fork) {
            want_fork = 0;
            uint64_t t0 = now_ns();
            pid_t c = fork();
            uint64_t t1 = now_ns();
            if (c == 0) _exit(0);
            waitpid(c, NULL, 0);
            printf("fork_us %lu\n", (unsigned long)((t1 - t0) / 1000));
            last = now_ns();
        }
    }
    return 0;
}
