/* A program checkpointed incrementally between its phases. It fills memory with text-like
 * bytes, then for each phase K prints "ready K", waits for a file go.K, and changes its
 * memory in a way a chain of images must follow: a few pages rewritten every phase, and in
 * phases 2 to 5 a mapping unmapped and a new one made, a mapping moved and grown (mremap),
 * pages discarded (MADV_DONTNEED: they must read zero), heap blocks freed and allocated,
 * pages rewritten as all zeros. Each phase prints a hash of everything.
 * Usage: inc_mem MIB PHASES. Output is deterministic: compared with an uninterrupted run. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024)
#define PAGE 4096UL
#define BLOCKS 64

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void text(unsigned char *p, size_t n, uint32_t seed) {
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "epsilon ",
                                  "zeta ", "eta ", "theta\n", "iota ", "kappa "};
    uint32_t x = seed;
    size_t i = 0;
    while (i < n) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % 10];
        for (size_t k = 0; w[k] && i < n; k++) p[i++] = (unsigned char)w[k];
    }
}

static void *region(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

static void wait_for(const char *name) {
    struct stat st;
    struct timespec ts = {0, 2000000};
    for (long i = 0; stat(name, &st) != 0; i++) {
        if (i > 90000) { fprintf(stderr, "no %s\n", name); exit(2); }
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    size_t big_len = (argc > 1 ? strtoul(argv[1], 0, 10) : 32) * MIB;
    int phases = argc > 2 ? atoi(argv[2]) : 5;
    size_t npages = big_len / PAGE;
    unsigned char *big = region(big_len);
    text(big, big_len, 1);
    size_t small_len = 256 * 1024, moving_len = MIB, fresh_len = 512 * 1024;
    unsigned char *small = region(small_len);
    text(small, small_len, 2);
    unsigned char *moving = region(moving_len);
    text(moving, moving_len, 3);
    unsigned char *fresh = NULL;
    unsigned char *blocks[BLOCKS];
    size_t sizes[BLOCKS];
    for (int b = 0; b < BLOCKS; b++) {
        sizes[b] = 1000 + 997 * b;
        blocks[b] = malloc(sizes[b]);
        text(blocks[b], sizes[b], 100 + b);
    }
    for (int k = 1; k <= phases; k++) {
        printf("ready %d\n", k);
        fflush(stdout);
        char go[32];
        snprintf(go, sizeof go, "go.%d", k);
        wait_for(go);
        /* About 1% of the big region's pages, a different set each phase. */
        for (size_t i = (size_t)k * 7 % 100; i < npages; i += 100)
            text(big + i * PAGE, PAGE, 1000 * k + (uint32_t)i);
        if (k == 2) {
            munmap(small, small_len);
            fresh = region(fresh_len);
            text(fresh, fresh_len, 20);
        }
        if (k == 3) {
            unsigned char *m = mremap(moving, moving_len, 2 * moving_len, MREMAP_MAYMOVE);
            if (m == MAP_FAILED) { perror("mremap"); return 1; }
            moving = m;
            text(moving + moving_len, moving_len, 30);
            moving_len *= 2;
        }
        if (k == 4) {
            madvise(big + 64 * PAGE, 32 * PAGE, MADV_DONTNEED);
            memset(big + 200 * PAGE, 0, 3 * PAGE);
        }
        if (k == 5 || k % 7 == 0) {
            for (int b = k % 3; b < BLOCKS; b += 3) {
                free(blocks[b]);
                sizes[b] += 4096 * (size_t)k;
                blocks[b] = malloc(sizes[b]);
                text(blocks[b], sizes[b], 500 * k + b);
            }
        }
        uint64_t h = 1469598103934665603ULL;
        h = fnv(h, big, big_len);
        if (k < 2) h = fnv(h, small, small_len);
        if (fresh) h = fnv(h, fresh, fresh_len);
        h = fnv(h, moving, moving_len);
        for (int b = 0; b < BLOCKS; b++) h = fnv(h, blocks[b], sizes[b]);
        printf("phase %d %016llx\n", k, (unsigned long long)h);
        fflush(stdout);
    }
    printf("done\n");
    return 0;
}
