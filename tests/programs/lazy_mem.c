/* A program whose memory a lazy restart fills while it runs. Before the checkpoint it
 * fills regions with text-like bytes and waits for a `go` file; after it, every step
 * touches pages of the image for the first time, in the ways that need more than a plain
 * fault: read(2) and write(2) on missing pages (the kernel touches them), fork (the child's
 * missing pages), mremap (pages that moved), MADV_DONTNEED (pages that must read zero).
 * Usage: lazy_mem MIB [orphan]. Output is deterministic: compared with an uninterrupted run. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024)

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void text(unsigned char *p, size_t n, uint32_t seed) {
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "epsilon ",
                                  "zeta ", "eta ", "theta\n", "iota ", "kappa "};
    uint32_t x = seed;
    size_t i = 0;
    while (i < n) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % 10];
        for (size_t k = 0; w[k] && i < n; k++) p[i++] = (unsigned char)w[k];
        if ((x >> 8) % 97 == 0) {
            char num[16];
            int m = snprintf(num, sizeof num, "%u ", x % 100000);
            for (int k = 0; k < m && i < n; k++) p[i++] = (unsigned char)num[k];
        }
    }
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static void *region(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

int main(int argc, char **argv) {
    size_t big_len = (argc > 1 ? strtoul(argv[1], 0, 10) : 64) * MIB;
    unsigned char *big = region(big_len);
    unsigned char *rbuf = region(MIB);
    unsigned char *moving = region(4 * MIB);
    unsigned char *dropped = region(2 * MIB);
    text(big, big_len, 1);
    text(rbuf, MIB, 2);
    text(moving, 4 * MIB, 3);
    text(dropped, 2 * MIB, 4);
    /* The input read after the restart. */
    {
        unsigned char *in = malloc(MIB);
        text(in, MIB, 5);
        int fd = open("in.dat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, in, MIB) != (ssize_t)MIB) { perror("in.dat"); return 1; }
        close(fd);
        free(in);
    }
    printf("ready\n");
    fflush(stdout);
    struct stat st;
    while (stat("go", &st) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, 0);
    }

    /* "orphan": the program ends at once, leaving a child that still needs its pages. */
    if (argc > 2 && !strcmp(argv[2], "orphan")) {
        pid_t c = fork();
        if (c == 0) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, 0); /* the parent is gone by now */
            FILE *f = fopen("orphan.tmp", "w");
            fprintf(f, "orphan %016llx\n", (unsigned long long)fnv(big, big_len));
            fclose(f);
            rename("orphan.tmp", "orphan.out");
            _exit(0);
        }
        printf("forked\n");
        return 0;
    }

    /* read(2) into pages not yet filled: the kernel writes them. */
    int fd = open("in.dat", O_RDONLY);
    if (fd < 0 || read(fd, rbuf, MIB) != (ssize_t)MIB) { perror("read"); return 1; }
    close(fd);
    printf("read %016llx\n", (unsigned long long)fnv(rbuf, MIB));

    /* write(2) from pages not yet filled: the kernel reads them. */
    fd = open("w.out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    size_t wlen = big_len / 4;
    if (fd < 0 || write(fd, big + big_len / 2, wlen) != (ssize_t)wlen) { perror("write"); return 1; }
    close(fd);
    printf("wrote %zu bytes\n", wlen);
    fflush(stdout);

    /* fork: the child reads pages neither process has touched since the restart. */
    pid_t child = fork();
    if (child == 0) {
        printf("child %016llx\n", (unsigned long long)fnv(big + big_len / 4, big_len / 4));
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { printf("child failed\n"); return 1; }

    /* mremap: the pages are found where they moved; the grown part is zero. */
    unsigned char *moved = mremap(moving, 4 * MIB, 8 * MIB, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) { perror("mremap"); return 1; }
    printf("mremap %016llx grown-zero=%d\n", (unsigned long long)fnv(moved, 4 * MIB),
           all_zero(moved + 4 * MIB, 4 * MIB));

    /* MADV_DONTNEED: discarded pages read zero, the others keep their contents. */
    if (madvise(dropped, MIB, MADV_DONTNEED) != 0) { perror("madvise"); return 1; }
    printf("dontneed zero=%d rest=%016llx\n", all_zero(dropped, MIB),
           (unsigned long long)fnv(dropped + MIB, MIB));

    printf("all %016llx\n", (unsigned long long)fnv(big, big_len));
    printf("done\n");
    return 0;
}
