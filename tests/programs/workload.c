/* A single-threaded program that keeps state in every kind of memory a checkpoint must
 * carry, and prints a running checksum of all of it after each step:
 *
 *   workload OUTDIR STEPS DELAY_US HOLD_STEP
 *
 * - static data (.data, initialised) and .bss,
 * - the heap (malloc, one realloc mid-run),
 * - the stack (a large local array, and a recursion each step),
 * - an anonymous private mapping (8 MiB, filled with incompressible bytes),
 * - a private mapping of OUTDIR/input.bin (created at start) whose pages it writes,
 * - floating-point state carried in a local across the steps,
 * - OUTDIR/data.bin, written with pwrite at scattered offsets, and
 * - stdout (line per step, flushed), whose offset the restart must keep.
 *
 * At step HOLD_STEP (0: never) it waits until OUTDIR/go exists, so a test can act while
 * the program is known to be mid-run. Its random numbers are seeded from OUTDIR/seed (read
 * once at start, if it exists): a test changes that file after the checkpoint, so a
 * "restart" that ran the program again from the beginning would print other numbers.
 * The output depends on nothing but the arguments and the seed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define ANON_BYTES (8u << 20)
#define INPUT_BYTES (1u << 20)
#define RECORD 512

static uint64_t table[2048] = {1, 2, 3, 5, 8, 13, 21, 34}; /* .data */
static uint64_t scratch[4096];                               /* .bss */
static const char *outdir;

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

static void die(const char *what) {
    fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static char *path(const char *name) {
    char *p;
    if (asprintf(&p, "%s/%s", outdir, name) < 0) die("asprintf");
    return p;
}

/* Recursion: state on the stack across calls. */
static uint64_t descend(uint64_t h, int depth) {
    volatile uint64_t frame[64];
    for (int i = 0; i < 64; i++) frame[i] = mix(h, (uint64_t)(depth * 64 + i));
    if (depth == 0) return frame[63];
    uint64_t r = descend(frame[depth % 64], depth - 1);
    return mix(r, frame[0]);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void hold(void) {
    char *go = path("go");
    /* Bounded: a test that never releases us should not leave us running forever. */
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, 0);
    }
    free(go);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: workload OUTDIR STEPS DELAY_US HOLD_STEP\n");
        return 2;
    }
    outdir = argv[1];
    long steps = atol(argv[2]);
    long delay_us = atol(argv[3]);
    long hold_step = atol(argv[4]);

    char *seed_path = path("seed");
    FILE *seed = fopen(seed_path, "r");
    if (seed) {
        unsigned long long v;
        if (fscanf(seed, "%llu", &v) == 1) rng_state ^= v * 0x9E3779B97F4A7C15ULL;
        fclose(seed);
    }
    free(seed_path);

    /* The private file mapping's backing file, created before any checkpoint. */
    char *input = path("input.bin");
    int in = open(input, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0) die("create input.bin");
    {
        static unsigned char buf[INPUT_BYTES];
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 131 + (i >> 12));
        if (write(in, buf, sizeof buf) != (ssize_t)sizeof buf) die("write input.bin");
    }
    close(in);
    in = open(input, O_RDONLY);
    if (in < 0) die("open input.bin");
    unsigned char *fmap = mmap(0, INPUT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE, in, 0);
    if (fmap == MAP_FAILED) die("mmap input.bin");
    close(in);

    unsigned char *anon =
        mmap(0, ANON_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) die("mmap anonymous");
    /* Incompressible contents, so the image has real bytes to carry. */
    for (size_t i = 0; i < ANON_BYTES; i += 8) {
        uint64_t r = rng();
        memcpy(anon + i, &r, 8);
    }

    size_t heap_len = 1u << 20;
    uint64_t *heap = malloc(heap_len);
    if (!heap) die("malloc");
    for (size_t i = 0; i < heap_len / 8; i++) heap[i] = i * 2654435761u;

    char *data_path = path("data.bin");
    int data = open(data_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (data < 0) die("create data.bin");

    setvbuf(stdout, 0, _IOFBF, 1 << 16);
    uint64_t stack[2048];
    for (int i = 0; i < 2048; i++) stack[i] = (uint64_t)i * i;
    double fp = 1.0;
    uint64_t h = 0;

    for (long step = 1; step <= steps; step++) {
        if (step == hold_step) hold();
        if (step == steps / 2) {
            /* Grow the heap mid-run: realloc may move it into a fresh mapping. */
            heap = realloc(heap, heap_len * 4);
            if (!heap) die("realloc");
            for (size_t i = heap_len / 8; i < heap_len * 4 / 8; i++) heap[i] = i ^ (uint64_t)step;
            heap_len *= 4;
        }
        uint64_t r = rng();
        table[r % 2048] ^= r;
        scratch[(r >> 11) % 4096] += step;
        heap[(r >> 22) % (heap_len / 8)] = mix(r, step);
        stack[(r >> 33) % 2048] ^= h;
        size_t page = (r >> 7) % (ANON_BYTES / PAGE);
        anon[page * PAGE + step % PAGE] ^= (unsigned char)r;
        size_t fpage = (r >> 17) % (INPUT_BYTES / PAGE);
        fmap[fpage * PAGE + (r >> 40) % PAGE] += (unsigned char)step;
        fp = fp * 1.000001 + sqrt((double)(r % 1000)) / 1000.0;

        h = mix(h, (uint64_t)step);
        h = hash_bytes(h, table, sizeof table);
        h = hash_bytes(h, scratch, sizeof scratch);
        h = hash_bytes(h, heap, heap_len);
        h = hash_bytes(h, stack, sizeof stack);
        h = hash_bytes(h, anon + page * PAGE, PAGE);
        h = hash_bytes(h, fmap, INPUT_BYTES);
        h = mix(h, descend(h, 24));

        char rec[RECORD];
        memset(rec, ' ', sizeof rec);
        int n = snprintf(rec, sizeof rec, "step %ld hash %016llx fp %.9f", step,
                         (unsigned long long)h, fp);
        rec[n] = ' ';
        rec[RECORD - 1] = '\n';
        off_t at = (off_t)((step * 7919) % steps) * RECORD;
        if (pwrite(data, rec, sizeof rec, at) != (ssize_t)sizeof rec) die("pwrite data.bin");

        printf("step %ld checksum %016llx fp %.9f\n", step, (unsigned long long)h, fp);
        fflush(stdout);
        if (delay_us > 0) usleep((useconds_t)delay_us);
    }
    h = hash_bytes(h, anon, ANON_BYTES);
    printf("done %ld steps, final %016llx\n", steps, (unsigned long long)h);
    fflush(stdout);
    close(data);
    return 0;
}
