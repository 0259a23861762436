/* A small program the set-uid test installs with the set-user-ID bit:
 *
 *   rel_secure OUTDIR STEPS HOLD_STEP [LIBRARY]
 *
 * With LIBRARY (an absolute path), it first dlopen()s it: glibc ignores LD_PRELOAD from a
 * non-standard path in a set-uid program, but an absolute dlopen still loads the library,
 * so its own AT_SECURE check decides whether it arms itself. Then it prints a checksum per
 * step (flushed), waiting before step HOLD_STEP until OUTDIR/go exists (access() checks
 * with the real user ID). Its output depends only on STEPS, whatever its user IDs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: rel_secure OUTDIR STEPS HOLD_STEP [LIBRARY]\n");
        return 2;
    }
    const char *outdir = argv[1];
    long steps = atol(argv[2]);
    long hold_step = atol(argv[3]);
    if (argc == 5 && !dlopen(argv[4], RTLD_NOW | RTLD_LOCAL)) {
        fprintf(stderr, "rel_secure: dlopen %s: %s\n", argv[4], dlerror());
        return 1;
    }
    char go[4096];
    snprintf(go, sizeof go, "%s/go", outdir);
    uint64_t h = 1469598103934665603ULL;
    for (long i = 1; i <= steps; i++) {
        if (i == hold_step) {
            for (int t = 0; t < 600000 && access(go, F_OK) != 0; t++) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            }
        }
        for (uint64_t k = 0; k < 100000; k++) h = (h ^ k) * 1099511628211ULL;
        printf("step %ld %016llx\n", i, (unsigned long long)h);
        fflush(stdout);
    }
    return 0;
}
