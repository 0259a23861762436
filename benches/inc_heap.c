/* The incremental-checkpoint benchmark's program: a text-like heap of MIB MiB; before each
 * phase K it prints "ready K" and waits for a file go.K, then rewrites PERMILLE/1000 of its
 * pages (spread over the heap, a different set each phase). After PHASES phases it prints
 * a hash of the heap and exits. Usage: inc_heap MIB PERMILLE PHASES */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

static void text(unsigned char *p, size_t n, uint32_t x) {
    static const char *w[] = {"alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "};
    size_t i = 0;
    while (i < n) {
        x = x * 1103515245u + 12345u;
        for (const char *s = w[(x >> 16) % 6]; *s && i < n; s++) p[i++] = (unsigned char)*s;
        if ((x >> 8) % 61 == 0 && i + 6 < n) i += (size_t)snprintf((char *)p + i, 7, "%05u ", x % 99999);
    }
}

int main(int argc, char **argv) {
    size_t len = strtoul(argv[1], 0, 10) << 20, pages = len / 4096;
    unsigned permille = (unsigned)atoi(argv[2]);
    int phases = atoi(argv[3]);
    unsigned char *heap = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) return 1;
    text(heap, len, 7);
    size_t step = permille ? 1000 / permille : pages + 1;
    for (int k = 1; k <= phases; k++) {
        printf("ready %d\n", k);
        fflush(stdout);
        char go[32];
        snprintf(go, sizeof go, "go.%d", k);
        struct stat st;
        struct timespec ts = {0, 1000000};
        while (stat(go, &st) != 0) nanosleep(&ts, NULL);
        for (size_t i = (size_t)k % step; i < pages; i += step) text(heap + i * 4096, 4096, 1000u * k + (uint32_t)i);
    }
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ heap[i]) * 1099511628211ULL;
    printf("done %016llx\n", (unsigned long long)h);
    return 0;
}
