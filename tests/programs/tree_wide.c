/* A tree of 64 processes: the root, 7 children, 8 grandchildren under each. Each process
 * holds a little state of its own (a number computed at start); once the file "go" exists,
 * each child and grandchild sends its number up one shared pipe and exits with a code
 * derived from its index; every parent waits for its children by their stored PIDs and
 * checks the codes. The root prints the sum of all numbers and PASS or FAIL. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { KIDS = 7, GRANDKIDS = 8 };

static void wait_for_go(void) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    while (access("go", F_OK) != 0)
        nanosleep(&ts, NULL);
}

static unsigned long number_of(int index) {
    unsigned long x = 1469598103934665603ul ^ (unsigned long)index;
    for (int i = 0; i < 100000; i++)
        x = (x ^ (x >> 13)) * 1099511628211ul;
    return x % 1000003;
}

static int reap(const pid_t *pids, const int *codes, int n) {
    int ok = 1;
    for (int i = 0; i < n; i++) {
        int st = 0;
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) ||
            WEXITSTATUS(st) != codes[i])
            ok = 0;
    }
    return ok;
}

static void member(int index, int results, int ready) {
    unsigned long n = number_of(index);
    if (write(ready, "r", 1) != 1)
        _exit(99);
    wait_for_go();
    if (write(results, &n, sizeof n) != sizeof n)
        _exit(99);
}

int main(void) {
    int results[2], ready[2];
    if (pipe(results) != 0 || pipe(ready) != 0)
        return 1;
    pid_t kids[KIDS];
    int kid_codes[KIDS];
    for (int k = 0; k < KIDS; k++) {
        int index = 1 + k * (GRANDKIDS + 1);
        kid_codes[k] = index % 100;
        kids[k] = fork();
        if (kids[k] == 0) {
            pid_t g[GRANDKIDS];
            int g_codes[GRANDKIDS];
            for (int j = 0; j < GRANDKIDS; j++) {
                g_codes[j] = (index + 1 + j) % 100;
                g[j] = fork();
                if (g[j] == 0) {
                    member(index + 1 + j, results[1], ready[1]);
                    _exit(g_codes[j]);
                }
            }
            member(index, results[1], ready[1]);
            _exit(reap(g, g_codes, GRANDKIDS) ? kid_codes[k] : 98);
        }
    }
    char b;
    for (int i = 0; i < KIDS * (GRANDKIDS + 1); i++)
        if (read(ready[0], &b, 1) != 1)
            return 1;
    printf("ready\n");
    fflush(stdout);
    wait_for_go();
    unsigned long sum = 0, n;
    for (int i = 0; i < KIDS * (GRANDKIDS + 1); i++) {
        if (read(results[0], &n, sizeof n) != sizeof n)
            return 1;
        sum += n;
    }
    int ok = reap(kids, kid_codes, KIDS);
    printf("sum=%lu %s\n", sum, ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
