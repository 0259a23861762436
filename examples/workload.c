/*
 * workload: holds N MiB of touched memory with a chosen pattern and measures its own
 * largest stall, for forkpoint's benchmark.
 *
 *   workload MIB PATTERN [DUMP_FILE]
 *     PATTERN: text (compressible, text-like), random, sparse (1 page in 64 touched), zero
 *     DUMP_FILE: the buffer is also written there (the bytes zstd is compared on)
 *
 * Prints "ready" once the memory is filled, then "tick N" every 100 ms. On SIGUSR1 it
 * prints "stall_us X" (largest gap between two iterations of its loop since the last
 * report) and resets it; on SIGUSR2 it does a bare fork() (child exits at once) and prints
 * "fork_us X": the baseline a forked checkpoint is compared with. SIGTERM ends it.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_report, want_fork, want_stop;
static void on_usr1(int s) { (void)s; want_report = 1; }
static void on_usr2(int s) { (void)s; want_fork = 1; }
static void on_term(int s) { (void)s; want_stop = 1; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: workload MIB text|random|sparse|zero [DUMP]\n"); return 2; }
    size_t len = (size_t)atol(argv[1]) << 20;
    const char *pat = argv[2];
    unsigned char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    static const char *words[] = {"checkpoint", "restart", "fork", "image", "page", "the", "of", "memory",
                                  "process", "kernel", "and", "zstd", "chunk", "signal", "thread", "a"};
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
        for (size_t p = 0; p < len; p += 64 * 4096) for (size_t k = 0; k < 4096; k += 8) { uint64_t v = next(); memcpy(buf + p + k, &v, 8); }
    } else if (!strcmp(pat, "zero")) {
        for (size_t i = 0; i < len; i += 4096) ((volatile unsigned char *)buf)[i] = 0;
    } else { fprintf(stderr, "unknown pattern %s\n", pat); return 2; }
    if (argc > 3) {
        FILE *f = fopen(argv[3], "w");
        if (!f || fwrite(buf, 1, len, f) != len || fclose(f)) { perror("dump"); return 1; }
    }
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    uint64_t last = now_ns(), start_tick = last, max_gap = 0, tick = 0;
    size_t pos = 0;
    while (!want_stop) {
        /* A little work per iteration, touching memory like a running program. */
        for (int k = 0; k < 64; k++) { buf[pos] ^= 1; pos = (pos + 4096 * 7 + 64) % len; }
        uint64_t t = now_ns();
        if (t - last > max_gap) max_gap = t - last;
        last = t;
        if (t - start_tick >= 100000000ull) { start_tick = t; printf("tick %lu\n", (unsigned long)++tick); }
        if (want_report) { want_report = 0; printf("stall_us %lu\n", (unsigned long)(max_gap / 1000)); max_gap = 0; last = now_ns(); }
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
