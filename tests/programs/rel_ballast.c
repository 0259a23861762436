/* A single-threaded program with a large, incompressible memory: its image takes a while to
 * write and to restore, which the fault-injection tests need (kill the writer or the loader
 * part-way, remove the directory during the write).
 *
 *   rel_ballast OUTDIR MB STEPS DELAY_US HOLD_STEP [exit-hold]
 *
 * It fills MB MiB of anonymous memory with xorshift bytes, then for STEPS steps rewrites a
 * few pages of it and prints a running checksum (a line per step, flushed), sleeping
 * DELAY_US after each. Before step HOLD_STEP (0: never) it waits until OUTDIR/go exists.
 * With "exit-hold", the wait happens instead in an atexit handler, after main has returned
 * and exit() has begun: the handler prints a line, waits for OUTDIR/go, and prints a last
 * checksum. Its numbers come from OUTDIR/seed (read once at start): a test changes it after
 * the checkpoint, so a "restart" that ran the program again would print other numbers. The
 * output depends on nothing but the arguments and the seed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static const char *outdir;
static unsigned char *ballast;
static size_t ballast_len;
static uint64_t h;
static uint64_t rng_state = 88172645463325252ULL;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t mix(uint64_t a, uint64_t v) {
    a ^= v + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2);
    return a * 0xff51afd7ed558ccdULL;
}

static uint64_t hash_bytes(uint64_t a, const unsigned char *p, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        a = mix(a, v);
    }
    return a;
}

static void die(const char *what) {
    fprintf(stderr, "rel_ballast: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void hold(void) {
    char *go;
    if (asprintf(&go, "%s/go", outdir) < 0) die("asprintf");
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, 0);
    }
    free(go);
}

static void in_exit(void) {
    printf("in the exit handler, checksum %016llx\n", (unsigned long long)h);
    fflush(stdout);
    hold();
    h = hash_bytes(h, ballast, ballast_len);
    printf("exit handler done, final %016llx\n", (unsigned long long)h);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: rel_ballast OUTDIR MB STEPS DELAY_US HOLD_STEP [exit-hold]\n");
        return 2;
    }
    outdir = argv[1];
    ballast_len = (size_t)atol(argv[2]) << 20;
    long steps = atol(argv[3]);
    long delay_us = atol(argv[4]);
    long hold_step = atol(argv[5]);
    int exit_hold = argc == 7 && strcmp(argv[6], "exit-hold") == 0;

    char *seed_path;
    if (asprintf(&seed_path, "%s/seed", outdir) < 0) die("asprintf");
    FILE *seed = fopen(seed_path, "r");
    if (seed) {
        unsigned long long v;
        if (fscanf(seed, "%llu", &v) == 1) rng_state ^= v * 0x9E3779B97F4A7C15ULL;
        fclose(seed);
    }
    free(seed_path);

    ballast = mmap(0, ballast_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ballast == MAP_FAILED) die("mmap");
    for (size_t i = 0; i < ballast_len; i += 8) {
        uint64_t r = rng();
        memcpy(ballast + i, &r, 8);
    }
    if (exit_hold && atexit(in_exit) != 0) die("atexit");

    setvbuf(stdout, 0, _IOFBF, 1 << 16);
    for (long step = 1; step <= steps; step++) {
        if (step == hold_step) hold();
        uint64_t r = rng();
        for (int k = 0; k < 4; k++) {
            size_t page = (size_t)((r >> (k * 7)) % (ballast_len / PAGE));
            ballast[page * PAGE + (size_t)step % PAGE] ^= (unsigned char)(r >> k);
            h = mix(h, hash_bytes(h, ballast + page * PAGE, PAGE));
        }
        printf("step %ld checksum %016llx\n", step, (unsigned long long)h);
        fflush(stdout);
        if (delay_us > 0) usleep((useconds_t)delay_us);
    }
    if (!exit_hold) {
        h = hash_bytes(h, ballast, ballast_len);
        printf("done %ld steps, final %016llx\n", steps, (unsigned long long)h);
        fflush(stdout);
    }
    return 0;
}
