/* zdtm-style test: what the kernel keeps about a process's memory layout (set on restart by
 * prctl(PR_SET_MM_MAP)) is the program's own after a restart, not the loader's: the brk
 * (sbrk(0), /proc/self/stat start_brk/brk, a heap that grows with brk), argv and environment
 * (/proc/self/cmdline, /proc/self/environ, the arg/env ranges in /proc/self/stat), the auxiliary
 * vector (/proc/self/auxv, getauxval) and, where the restart may set it, /proc/self/exe.
 *
 *   zdtm_mm GO [ARGS...]
 *
 * Prints "ready", waits until the file GO exists, then compares; exit 0 and "PASS" only if all
 * match, "FAIL" lines on stderr otherwise. Set FORKPOINT_TEST_EXE_KEPT=1 when /proc/self/exe
 * must name this program too (a restart with CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/auxv.h>

#include "zdtm.h"

static size_t slurp(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY);
    SETUP(fd >= 0);
    size_t n = 0;
    ssize_t k;
    while (n < cap && (k = read(fd, buf + n, cap - n)) > 0)
        n += (size_t)k;
    close(fd);
    return n;
}

/* Fields 45..51 of /proc/self/stat (1-based, proc(5)): start_data, end_data, start_brk,
 * arg_start, arg_end, env_start, env_end. */
static void stat_fields(unsigned long out[7]) {
    char b[4096] = {0};
    slurp("/proc/self/stat", b, sizeof b - 1);
    char *p = strrchr(b, ')'); /* the name may hold spaces */
    SETUP(p != NULL);
    int field = 2;
    int k = 0;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field >= 45 && field <= 51)
            out[k++] = strtoul(tok, NULL, 10);
    }
    SETUP(k == 7);
}

struct snapshot {
    char cmdline[4096];
    size_t cmdline_len;
    char environ_[65536];
    size_t environ_len;
    char auxv[4096];
    size_t auxv_len;
    char exe[4096];
    unsigned long stat[7];
    unsigned long pagesz, random, sysinfo, hwcap, hwcap2, phdr, entry;
    unsigned char random_bytes[16];
    void *brk;
};

static void take(struct snapshot *s) {
    memset(s, 0, sizeof *s);
    s->cmdline_len = slurp("/proc/self/cmdline", s->cmdline, sizeof s->cmdline);
    s->environ_len = slurp("/proc/self/environ", s->environ_, sizeof s->environ_);
    s->auxv_len = slurp("/proc/self/auxv", s->auxv, sizeof s->auxv);
    SETUP(readlink("/proc/self/exe", s->exe, sizeof s->exe - 1) > 0);
    stat_fields(s->stat);
    s->pagesz = getauxval(AT_PAGESZ);
    s->random = getauxval(AT_RANDOM);
    s->sysinfo = getauxval(AT_SYSINFO_EHDR);
    s->hwcap = getauxval(AT_HWCAP);
    s->hwcap2 = getauxval(AT_HWCAP2);
    s->phdr = getauxval(AT_PHDR);
    s->entry = getauxval(AT_ENTRY);
    if (s->random)
        memcpy(s->random_bytes, (void *)s->random, 16);
    s->brk = sbrk(0);
}

static struct snapshot before, after;

int main(int argc, char **argv) {
    SETUP(argc >= 2);
    /* Small allocations come from the brk heap, never from mmap. */
    SETUP(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1);
    char *early = malloc(200000);
    SETUP(early != NULL);
    memset(early, 0x5a, 200000);
    take(&before);
    SETUP(before.brk != (void *)-1 && before.pagesz && before.random && before.sysinfo);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    take(&after);
    CHECK(after.cmdline_len == before.cmdline_len &&
              memcmp(after.cmdline, before.cmdline, before.cmdline_len) == 0,
          "/proc/self/cmdline is not the program's (%zu bytes, was %zu): \"%.*s\"",
          after.cmdline_len, before.cmdline_len, (int)after.cmdline_len, after.cmdline);
    CHECK(after.environ_len == before.environ_len &&
              memcmp(after.environ_, before.environ_, before.environ_len) == 0,
          "/proc/self/environ is not the program's (%zu bytes, was %zu)", after.environ_len,
          before.environ_len);
    CHECK(after.auxv_len == before.auxv_len && memcmp(after.auxv, before.auxv, before.auxv_len) == 0,
          "/proc/self/auxv is not the program's (%zu bytes, was %zu)", after.auxv_len,
          before.auxv_len);
    static const char *names[7] = {"start_data", "end_data", "start_brk", "arg_start",
                                   "arg_end",    "env_start", "env_end"};
    for (int i = 0; i < 7; i++)
        CHECK(after.stat[i] == before.stat[i], "/proc/self/stat %s is %#lx, was %#lx", names[i],
              after.stat[i], before.stat[i]);
    CHECK(after.pagesz == before.pagesz, "AT_PAGESZ %lu, was %lu", after.pagesz, before.pagesz);
    CHECK(after.random == before.random && memcmp(after.random_bytes, before.random_bytes, 16) == 0,
          "AT_RANDOM %#lx (or its bytes) differs from %#lx", after.random, before.random);
    CHECK(after.sysinfo == before.sysinfo, "AT_SYSINFO_EHDR %#lx, was %#lx", after.sysinfo,
          before.sysinfo);
    CHECK(after.hwcap == before.hwcap && after.hwcap2 == before.hwcap2, "AT_HWCAP/AT_HWCAP2 differ");
    CHECK(after.phdr == before.phdr && after.entry == before.entry, "AT_PHDR/AT_ENTRY differ");
    CHECK(after.brk == before.brk, "sbrk(0) is %p, was %p", after.brk, before.brk);
    if (getenv("FORKPOINT_TEST_EXE_KEPT"))
        CHECK(strcmp(after.exe, before.exe) == 0, "/proc/self/exe is %s, was %s", after.exe,
              before.exe);
    for (int i = 0; i < 200000; i++)
        if (early[i] != 0x5a) {
            CHECK(0, "the early heap block changed at byte %d", i);
            break;
        }

    /* The heap grows from where it was: sbrk moves the kernel's brk, and the memory is there. */
    char *grown = sbrk(1 << 20);
    CHECK(grown == (char *)before.brk, "sbrk(1 MiB) returned %p, not the old end %p", grown,
          before.brk);
    if (grown != (char *)-1) {
        memset(grown, 0x33, 1 << 20);
        CHECK(sbrk(0) == grown + (1 << 20), "sbrk(0) after growing is %p", sbrk(0));
        CHECK(sbrk(-(1 << 20)) == grown + (1 << 20), "sbrk(-1 MiB) failed");
    }
    /* malloc keeps growing its brk heap: 64 MiB in small blocks, all written. */
    char *first = NULL, *last = NULL;
    for (int i = 0; i < 1024; i++) {
        char *p = malloc(65536);
        CHECK(p != NULL, "malloc(64 KiB) #%d failed", i);
        if (!p)
            break;
        memset(p, i, 65536);
        if (!first)
            first = p;
        last = p;
    }
    CHECK(sbrk(0) > (void *)before.brk, "malloc did not grow the brk heap (sbrk(0) %p, was %p)",
          sbrk(0), before.brk);
    CHECK(last && (void *)last < sbrk(0) && (void *)first >= (void *)before.stat[2],
          "malloc's blocks %p..%p are not in the brk heap %#lx..%p", first, last, before.stat[2],
          sbrk(0));
    unsigned long now[7];
    stat_fields(now);
    CHECK(now[2] == before.stat[2], "start_brk moved to %#lx", now[2]);
    return done();
}
