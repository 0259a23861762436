/* A batch job for the preemption tests: STEPS steps of hashing, "step I HASH" on stdout for
 * each; at step HOLD it waits for the file GO (the tests preempt it there, mid-run).
 *
 *   preempt_job STEPS HOLD GO [handler]
 *
 * With "handler" it installs its own SIGTERM handler, as a well-behaved job does: the handler
 * sets a flag, the job prints "stopping at step I" on stderr and exits 3 at the next step.
 * Without it, SIGTERM's default action applies. Ends with "done" on stdout. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>

#include "zdtm.h"

static volatile sig_atomic_t stop;
static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    SETUP(argc == 4 || argc == 5);
    long steps = atol(argv[1]), hold = atol(argv[2]);
    if (argc == 5) {
        struct sigaction sa = {0};
        sa.sa_handler = on_term;
        SETUP(sigaction(SIGTERM, &sa, NULL) == 0);
    }
    uint64_t h = 1469598103934665603ULL;
    for (long i = 1; i <= steps; i++) {
        /* Wait for GO (or a SIGTERM the handler took), at most 600 s on the clock. */
        for (double end = mono() + 600; i == hold && !stop && access(argv[3], F_OK) != 0;) {
            SETUP(mono() < end);
            usleep(2000);
        }
        if (stop) {
            fprintf(stderr, "stopping at step %ld\n", i);
            return 3;
        }
        for (uint64_t k = 0; k < 100000; k++)
            h = (h ^ k) * 1099511628211ULL;
        printf("step %ld %016llx\n", i, (unsigned long long)h);
        fflush(stdout);
    }
    printf("done\n");
    return 0;
}
