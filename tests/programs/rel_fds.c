/* A program that raises its soft limit of open files and keeps a file open on a high
 * descriptor number:
 *
 *   rel_fds OUTDIR STEPS HOLD_STEP FD
 *
 * It raises RLIMIT_NOFILE's soft limit to FD+1000 (or the hard limit, if lower: then it
 * fails), opens OUTDIR/high.txt for writing as descriptor FD, and for STEPS steps writes a
 * line to it and to stdout. Before step HOLD_STEP it waits until OUTDIR/go exists.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: rel_fds OUTDIR STEPS HOLD_STEP FD\n");
        return 2;
    }
    const char *outdir = argv[1];
    long steps = atol(argv[2]);
    long hold_step = atol(argv[3]);
    int high = atoi(argv[4]);
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 1;
    r.rlim_cur = (rlim_t)high + 1000;
    if (r.rlim_max != RLIM_INFINITY && r.rlim_cur > r.rlim_max) {
        fprintf(stderr, "rel_fds: the hard limit of open files is below %d\n", high + 1000);
        return 1;
    }
    if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
        fprintf(stderr, "rel_fds: setrlimit: %s\n", strerror(errno));
        return 1;
    }
    char path[4096], go[4096];
    snprintf(path, sizeof path, "%s/high.txt", outdir);
    snprintf(go, sizeof go, "%s/go", outdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, high) != high) {
        fprintf(stderr, "rel_fds: %s as descriptor %d: %s\n", path, high, strerror(errno));
        return 1;
    }
    close(fd);
    uint64_t h = 1469598103934665603ULL;
    for (long i = 1; i <= steps; i++) {
        if (i == hold_step) {
            for (int t = 0; t < 600000 && access(go, F_OK) != 0; t++) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            }
        }
        h = (h ^ (uint64_t)i) * 1099511628211ULL;
        char line[64];
        int n = snprintf(line, sizeof line, "step %ld %016llx\n", i, (unsigned long long)h);
        if (write(high, line, (size_t)n) != n) {
            fprintf(stderr, "rel_fds: write to descriptor %d: %s\n", high, strerror(errno));
            return 1;
        }
        fputs(line, stdout);
        fflush(stdout);
    }
    return 0;
}
