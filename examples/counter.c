/* A counter that prints its PID, a count and a running sum, a few times a second.
 *
 *   cc -O2 -o counter examples/counter.c
 *   forkpoint run -- ./counter 20
 *
 * Its state lives in ordinary memory (locals, the heap); nothing in it knows about
 * checkpoints. After `forkpoint restart`, it goes on counting from where the checkpoint
 * caught it, under the PID of the restart command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int last = argc > 1 ? atoi(argv[1]) : 20;
    long delay_ms = argc > 2 ? atol(argv[2]) : 300;
    unsigned long long *sum = malloc(sizeof *sum);
    if (!sum) return 1;
    *sum = 0;
    for (int i = 1; i <= last; i++) {
        *sum += (unsigned long long)i * i;
        printf("[pid %d] count %2d   sum of squares %llu\n", (int)getpid(), i, *sum);
        fflush(stdout);
        /* A checkpoint signal may cut a sleep short; sleep out the rest. */
        struct timespec left = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0) {
        }
    }
    printf("[pid %d] done\n", (int)getpid());
    return 0;
}
