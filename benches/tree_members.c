/* Benchmark program for benches/tree.sh.
 *
 *   tree_members N MB     a tree of N processes (the root and N-1 children), each with MB
 *                         MiB of touched, text-like memory; prints "ready" once all are,
 *                         then sleeps until killed
 *   tree_members fork MB  one process with MB MiB touched: prints the median time of a
 *                         bare fork() of it (the child exits at once), "fork_ms X"
 *   tree_members forks N MB  N such processes fork at the same moment (released together
 *                         from one pipe): prints the median over 5 rounds of the longest
 *                         of the N forks, "forks_ms X" (what a tree's cut costs at least) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static char *fill(long mb, unsigned seed) {
    size_t len = (size_t)mb << 20;
    char *p = malloc(len);
    if (!p) exit(2);
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "epsilon\n"};
    size_t off = 0;
    while (off + 16 < len) {
        const char *w = words[(seed = seed * 1103515245 + 12345) >> 28 & 3];
        size_t n = strlen(w);
        memcpy(p + off, w, n);
        off += n;
    }
    return p;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long mb = atol(argv[2]);
    if (strcmp(argv[1], "fork") == 0) {
        volatile char *p = fill(mb, 1);
        (void)p;
        double t[7];
        for (int i = 0; i < 7; i++) {
            double t0 = now_ms();
            pid_t c = fork();
            if (c == 0) _exit(0);
            t[i] = now_ms() - t0;
            waitpid(c, NULL, 0);
        }
        qsort(t, 7, sizeof t[0], cmp);
        printf("fork_ms %.3f\n", t[3]);
        return 0;
    }
    if (strcmp(argv[1], "forks") == 0 && argc == 4) {
        int n = atoi(argv[2]);
        long mb4 = atol(argv[3]);
        int go[2], res[2];
        if (pipe(go) != 0 || pipe(res) != 0) return 2;
        enum { ROUNDS = 5 };
        for (int i = 0; i < n; i++) {
            if (fork() == 0) {
                volatile char *q = fill(mb4, i + 1);
                (void)q;
                double r = -1;
                if (write(res[1], &r, sizeof r) != sizeof r) _exit(2);
                for (int k = 0; k < ROUNDS; k++) {
                    char b;
                    if (read(go[0], &b, 1) != 1) _exit(2);
                    double t0 = now_ms();
                    pid_t c = fork();
                    if (c == 0) _exit(0);
                    double dt = now_ms() - t0;
                    if (write(res[1], &dt, sizeof dt) != sizeof dt) _exit(2);
                    waitpid(c, NULL, 0);
                }
                _exit(0);
            }
        }
        double d, longest[ROUNDS];
        for (int i = 0; i < n; i++)
            if (read(res[0], &d, sizeof d) != sizeof d) return 2;
        char *all = malloc(n);
        memset(all, 'g', n);
        for (int k = 0; k < ROUNDS; k++) {
            if (write(go[1], all, n) != n) return 2;
            longest[k] = 0;
            for (int i = 0; i < n; i++) {
                if (read(res[0], &d, sizeof d) != sizeof d) return 2;
                if (d > longest[k]) longest[k] = d;
            }
            usleep(20000);
        }
        while (wait(NULL) > 0) {}
        qsort(longest, ROUNDS, sizeof longest[0], cmp);
        printf("forks_ms %.3f\n", longest[ROUNDS / 2]);
        return 0;
    }
    int n = atoi(argv[1]);
    int ready[2];
    if (pipe(ready) != 0) return 2;
    for (int i = 1; i < n; i++) {
        if (fork() == 0) {
            volatile char *p = fill(mb, i + 1);
            (void)p;
            if (write(ready[1], "r", 1) != 1) _exit(2);
            for (;;) pause();
        }
    }
    volatile char *p = fill(mb, 1);
    (void)p;
    char b;
    for (int i = 1; i < n; i++)
        if (read(ready[0], &b, 1) != 1) return 2;
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
