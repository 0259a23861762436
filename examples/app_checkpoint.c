/* A program that checkpoints itself through the library's API.
 *
 *   cc -O2 -o app_checkpoint examples/app_checkpoint.c
 *   forkpoint run -- ./app_checkpoint 60 20
 *
 * forkpoint_checkpoint() takes a checkpoint and waits until the image is durable. It
 * returns 0 when the image was written, 1 in a program restarted from that image (the call
 * "returns again", as fork() returns twice), and -1 if the checkpoint failed. Declared
 * weak, the program also runs without the library (the symbol is then NULL).
 *
 * Arguments: STEPS EVERY [GOFILE HOLD_STEP]: checkpoint every EVERY steps; at HOLD_STEP
 * wait until GOFILE exists (the tests use this to act while the program is mid-run).
 * Progress goes to stdout, what the checkpoints return to stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

extern int forkpoint_checkpoint(void) __attribute__((weak));

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 60;
    long every = argc > 2 ? atol(argv[2]) : 20;
    const char *go = argc > 3 ? argv[3] : NULL;
    long hold = argc > 4 ? atol(argv[4]) : 0;
    uint64_t h = 1469598103934665603ULL;

    for (long i = 1; i <= steps; i++) {
        if (go && i == hold) {
            for (int t = 0; t < 600000 && access(go, F_OK) != 0; t++) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            }
        }
        for (uint64_t k = 0; k < 200000; k++) h = (h ^ k) * 1099511628211ULL;
        printf("step %ld %016llx\n", i, (unsigned long long)h);
        fflush(stdout);
        if (every > 0 && i % every == 0) {
            if (!forkpoint_checkpoint) {
                fprintf(stderr, "step %ld: not running under forkpoint\n", i);
                continue;
            }
            switch (forkpoint_checkpoint()) {
            case 0:
                fprintf(stderr, "step %ld: checkpoint written\n", i);
                break;
            case 1:
                fprintf(stderr, "step %ld: restarted from the checkpoint\n", i);
                break;
            default:
                fprintf(stderr, "step %ld: checkpoint failed\n", i);
            }
        }
    }
    return 0;
}
