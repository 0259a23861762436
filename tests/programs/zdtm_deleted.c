/* zdtm-style test: files deleted while open keep their contents, size, offset and flags,
 * and come back still without a name.
 *
 *   zdtm_deleted GO DIR         a read-write file: contents, size, offset, still nameless
 *   zdtm_deleted GO DIR modes   also its permissions, a read-only one and a write-only
 *                               append one (their access modes and flags)
 *
 * Creates and unlinks files in DIR, prints "ready", waits until the file GO exists, then
 * checks from inside that the state is exactly as before; exit 0 and "PASS" only if so,
 * "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define SIZE 5000

static int make(const char *dir, const char *name, const char *data, size_t len, int flags) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
    SETUP(w >= 0 && write(w, data, len) == (ssize_t)len && close(w) == 0);
    int fd = open(path, flags);
    SETUP(fd >= 0 && unlink(path) == 0);
    return fd;
}

static void link_in(int fd, const char *dir) {
    char path[64], got[4096] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, got, sizeof got - 1);
    size_t d = strlen(dir);
    CHECK(n > 0 && strncmp(got, dir, d) == 0 && got[d] == '/' && n > 10 &&
              strcmp(got + n - 10, " (deleted)") == 0,
          "descriptor %d is '%s', not a deleted file in %s", fd, got, dir);
}

int main(int argc, char **argv) {
    SETUP(argc == 3 || argc == 4);
    const char *dir = argv[2];
    int modes = argc == 4 && strcmp(argv[3], "modes") == 0;
    static char pat[SIZE], got[SIZE];
    for (int i = 0; i < SIZE; i++)
        pat[i] = (char)('a' + (i * 7 + i / 26) % 26);
    int rw = make(dir, "deleted-rw", pat, SIZE, O_RDWR);
    SETUP(lseek(rw, 3000, SEEK_SET) == 3000);
    int ro = -1, ap = -1;
    if (modes) {
        ro = make(dir, "deleted-ro", "readonly-content", 16, O_RDONLY);
        SETUP(lseek(ro, 4, SEEK_SET) == 4);
        ap = make(dir, "deleted-append", "log-line\n", 9, O_WRONLY | O_APPEND | O_CLOEXEC);
    }
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    struct stat st;
    CHECK(fstat(rw, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 0 && st.st_size == SIZE,
          "mode %o, %ld links, size %ld", st.st_mode, (long)st.st_nlink, (long)st.st_size);
    link_in(rw, dir);
    CHECK(lseek(rw, 0, SEEK_CUR) == 3000, "offset %ld, not 3000", (long)lseek(rw, 0, SEEK_CUR));
    CHECK(read(rw, got, SIZE) == SIZE - 3000 && memcmp(got, pat + 3000, SIZE - 3000) == 0,
          "the contents after the offset differ");
    CHECK(pread(rw, got, SIZE, 0) == SIZE && memcmp(got, pat, SIZE) == 0, "the contents differ");
    CHECK((fcntl(rw, F_GETFL) & O_ACCMODE) == O_RDWR, "not read-write");

    if (modes) {
        CHECK((st.st_mode & 07777) == 0640, "permissions %o, not 640", st.st_mode & 07777);
        CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "a read-only descriptor became %s",
              (fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDWR ? "read-write" : "write-only");
        memset(got, 0, 32);
        CHECK(read(ro, got, 32) == 12 && memcmp(got, "only-content", 12) == 0, "read '%s'", got);
        link_in(ro, dir);

        CHECK((fcntl(ap, F_GETFL) & (O_ACCMODE | O_APPEND)) == (O_WRONLY | O_APPEND),
              "flags %#x, not write-only and append", fcntl(ap, F_GETFL));
        CHECK(fcntl(ap, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
        CHECK(write(ap, "more\n", 5) == 5 && fstat(ap, &st) == 0 && st.st_size == 14,
              "an append did not land at the end (size %ld)", (long)st.st_size);
    }

    /* Still no names in DIR. */
    DIR *d = opendir(dir);
    struct dirent *e;
    int names = 0;
    while (d && (e = readdir(d)))
        if (strncmp(e->d_name, "deleted", 7) == 0 || e->d_name[0] == '#')
            names++;
    if (d)
        closedir(d);
    CHECK(names == 0, "%d deleted file(s) have a name in %s again", names, dir);
    return done();
}
