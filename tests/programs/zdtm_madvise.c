/* zdtm-style test: memory with properties fork does not carry to the forked writer:
 * MADV_DONTFORK (the writer does not see it), MADV_WIPEONFORK (the writer sees zeros) and
 * mlock (not inherited by a child).
 *
 *   zdtm_madvise GO dontfork|wipeonfork|mlock
 *
 * Fills 16 pages, applies the property, prints "ready", waits until the file GO exists, then
 * checks that the pages still hold what they held and still have the property. Exit 0 and
 * "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define LEN (16 * 4096)

/* VmLck of /proc/self/status, in kB. */
static long locked_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmLck:", 6) == 0)
            v = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* In a forked child: 0 if the region is unmapped, 1 if all zero, 2 otherwise. */
static int seen_by_child(unsigned char *p) {
    fflush(stderr);
    pid_t c = fork();
    if (c == 0) {
        if (msync(p, LEN, MS_ASYNC) != 0)
            _exit(0);
        for (int i = 0; i < LEN; i++)
            if (p[i])
                _exit(2);
        _exit(1);
    }
    int st = 0;
    waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv) {
    SETUP(argc == 3);
    const char *mode = argv[2];
    unsigned char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SETUP(p != MAP_FAILED);
    for (int i = 0; i < LEN; i++)
        p[i] = (unsigned char)(i * 11 + i / 4096 + 1);
    int dontfork = strcmp(mode, "dontfork") == 0, wipe = strcmp(mode, "wipeonfork") == 0,
        lock = strcmp(mode, "mlock") == 0;
    SETUP(dontfork || wipe || lock);
    if (dontfork)
        SETUP(madvise(p, LEN, MADV_DONTFORK) == 0);
    if (wipe)
        SETUP(madvise(p, LEN, MADV_WIPEONFORK) == 0);
    long locked0 = locked_kb();
    if (lock)
        SETUP(mlock(p, LEN) == 0 && locked_kb() >= locked0 + 64);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    CHECK(msync(p, LEN, MS_ASYNC) == 0, "the region is gone");
    if (msync(p, LEN, MS_ASYNC) == 0) {
        int bad = -1;
        for (int i = 0; i < LEN && bad < 0; i++)
            if (p[i] != (unsigned char)(i * 11 + i / 4096 + 1))
                bad = i;
        CHECK(bad < 0, "byte %d of the region is %d, not what the program wrote", bad, p[bad]);
    }
    if (dontfork)
        CHECK(seen_by_child(p) == 0, "a child sees the MADV_DONTFORK region");
    if (wipe)
        CHECK(seen_by_child(p) == 1, "a child does not see the MADV_WIPEONFORK region as zeros");
    if (lock)
        CHECK(locked_kb() >= locked0 + 64, "VmLck is %ld kB, not at least %ld", locked_kb(),
              locked0 + 64);
    return done();
}
