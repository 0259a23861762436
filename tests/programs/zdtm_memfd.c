/* zdtm-style test: memfds keep their contents, name, size, offset, seals and flags.
 *
 *   zdtm_memfd GO
 *
 * Prints "ready", waits until the file GO exists, then checks from inside that the state is
 * exactly as before; exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define SIZE 10000

static void link_is(int fd, const char *want) {
    char path[64], got[256] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    CHECK(readlink(path, got, sizeof got - 1) > 0 && strcmp(got, want) == 0,
          "descriptor %d is '%s', not '%s'", fd, got, want);
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    static unsigned char pat[SIZE], got[SIZE];
    for (int i = 0; i < SIZE; i++)
        pat[i] = (unsigned char)(i * 31 + i / 97);
    /* Sealed against shrinking and growing, offset 1234. */
    int m = memfd_create("zdtm-memfd", MFD_ALLOW_SEALING);
    SETUP(m >= 0 && write(m, pat, SIZE) == SIZE && lseek(m, 1234, SEEK_SET) == 1234);
    SETUP(fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
    /* No sealing allowed (the kernel reports F_SEAL_SEAL), close-on-exec. */
    int plain = memfd_create("plain", MFD_CLOEXEC);
    SETUP(plain >= 0 && write(plain, "small", 5) == 5);
    /* Sealed against writing, and against more seals. */
    int frozen = memfd_create("frozen", MFD_ALLOW_SEALING);
    SETUP(frozen >= 0 && write(frozen, "frozen", 6) == 6);
    SETUP(fcntl(frozen, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) == 0);
    /* 1 MiB, sparse. */
    int sparse = memfd_create("sparse", 0);
    SETUP(sparse >= 0 && ftruncate(sparse, 1 << 20) == 0 && pwrite(sparse, "end", 3, (1 << 20) - 3) == 3);
    int seals_m = fcntl(m, F_GET_SEALS), seals_plain = fcntl(plain, F_GET_SEALS),
        seals_frozen = fcntl(frozen, F_GET_SEALS);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    link_is(m, "/memfd:zdtm-memfd (deleted)");
    link_is(plain, "/memfd:plain (deleted)");
    link_is(frozen, "/memfd:frozen (deleted)");
    struct stat st;
    CHECK(fstat(m, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == SIZE, "size %ld",
          (long)st.st_size);
    CHECK(lseek(m, 0, SEEK_CUR) == 1234, "offset %ld, not 1234", (long)lseek(m, 0, SEEK_CUR));
    CHECK(read(m, got, SIZE) == SIZE - 1234 && memcmp(got, pat + 1234, SIZE - 1234) == 0,
          "the contents after the offset differ");
    CHECK(pread(m, got, SIZE, 0) == SIZE && memcmp(got, pat, SIZE) == 0, "the contents differ");
    CHECK(fcntl(m, F_GET_SEALS) == seals_m, "seals %#x, were %#x", fcntl(m, F_GET_SEALS), seals_m);
    errno = 0;
    CHECK(ftruncate(m, 5) == -1 && errno == EPERM, "a memfd sealed against shrinking shrank");
    CHECK(pwrite(m, "ok", 2, 0) == 2, "a memfd not sealed against writing refuses writes");
    CHECK((fcntl(m, F_GETFL) & O_ACCMODE) == O_RDWR, "not read-write");
    CHECK((fcntl(m, F_GETFD) & FD_CLOEXEC) == 0, "gained FD_CLOEXEC");

    CHECK(fcntl(plain, F_GET_SEALS) == seals_plain, "seals %#x, were %#x",
          fcntl(plain, F_GET_SEALS), seals_plain);
    CHECK(fcntl(plain, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    memset(got, 0, 16);
    CHECK(pread(plain, got, 16, 0) == 5 && memcmp(got, "small", 5) == 0, "contents '%s'", got);

    CHECK(fcntl(frozen, F_GET_SEALS) == seals_frozen, "seals %#x, were %#x",
          fcntl(frozen, F_GET_SEALS), seals_frozen);
    errno = 0;
    CHECK(pwrite(frozen, "x", 1, 0) == -1 && errno == EPERM, "a write-sealed memfd took a write");
    memset(got, 0, 16);
    CHECK(pread(frozen, got, 16, 0) == 6 && memcmp(got, "frozen", 6) == 0, "contents '%s'", got);

    CHECK(fstat(sparse, &st) == 0 && st.st_size == 1 << 20, "size %ld", (long)st.st_size);
    memset(got, 1, 16);
    CHECK(pread(sparse, got, 16, 500000) == 16 && memcmp(got, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) == 0,
          "the hole is not zero");
    CHECK(pread(sparse, got, 3, (1 << 20) - 3) == 3 && memcmp(got, "end", 3) == 0, "the end differs");
    return done();
}
