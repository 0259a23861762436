/*
 * faultin MIB THREADS: prints the milliseconds it takes THREADS threads to fault in and fill
 * MIB MiB of fresh anonymous memory (each thread memsets its share). The floor under any
 * restart that materialises that much memory, next to the decompression baseline, which
 * writes to /dev/null. Used by benches/run.sh.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static unsigned char *buf;
static size_t share;
static void *fill(void *arg) {
    memset(buf + (size_t)arg * share, 1, share);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: faultin MIB THREADS\n"); return 2; }
    size_t len = (size_t)atol(argv[1]) << 20;
    long n = atol(argv[2]);
    if (n < 1 || n > 1024 || len == 0) { fprintf(stderr, "faultin: bad arguments\n"); return 2; }
    share = (len / n + 4095) & ~(size_t)4095;
    buf = mmap(NULL, share * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_t th[1024];
    for (long i = 0; i < n; i++) pthread_create(&th[i], NULL, fill, (void *)i);
    for (long i = 0; i < n; i++) pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    return 0;
}
