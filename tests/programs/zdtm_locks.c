/* zdtm-style test: file locks — POSIX (fcntl), flock and OFD — are held again after a
 * restart, on the same ranges and of the same types, and nothing more.
 *
 *   zdtm_locks GO DIR
 *
 * Locks files in DIR (lock-posix, lock-flock, lock-flock-shared, lock-ofd, lock-ofd-read),
 * prints "ready", waits until the file GO exists, then checks from a forked child (locks are
 * only visible from another process or description) that each lock is held exactly as
 * before. Exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int open_in(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    SETUP(fd >= 0);
    return fd;
}

static int lk(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, cmd, &fl);
}

/* What a F_GETLK / F_OFD_GETLK for a `type` lock on [start, start+len) finds. */
static struct flock probe(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl) != 0)
        fl.l_type = -1;
    return fl;
}

/* In a child: checks what the parent `owner` holds. Returns the number of failures. */
static int check_from_child(const char *dir, pid_t owner) {
    int a = open_in(dir, "lock-posix"), b = open_in(dir, "lock-flock"),
        d = open_in(dir, "lock-flock-shared"), c = open_in(dir, "lock-ofd"),
        e = open_in(dir, "lock-ofd-read");
    struct flock f = probe(a, F_GETLK, F_WRLCK, 0, 10);
    CHECK(f.l_type == F_WRLCK && f.l_pid == owner && f.l_start == 0 && f.l_len == 10,
          "POSIX write lock on bytes 0-9: found type %d pid %d start %ld len %ld (owner %d)",
          f.l_type, f.l_pid, (long)f.l_start, (long)f.l_len, owner);
    f = probe(a, F_GETLK, F_WRLCK, 50, 10);
    CHECK(f.l_type == F_RDLCK && f.l_pid == owner && f.l_start == 50 && f.l_len == 10,
          "POSIX read lock on bytes 50-59: found type %d pid %d start %ld len %ld", f.l_type,
          f.l_pid, (long)f.l_start, (long)f.l_len);
    f = probe(a, F_GETLK, F_RDLCK, 50, 10);
    CHECK(f.l_type == F_UNLCK, "a read lock on bytes 50-59 conflicts: it became a write lock");
    f = probe(a, F_GETLK, F_WRLCK, 10, 40);
    CHECK(f.l_type == F_UNLCK, "bytes 10-49 are locked (type %d start %ld len %ld)", f.l_type,
          (long)f.l_start, (long)f.l_len);
    f = probe(a, F_GETLK, F_WRLCK, 60, 0);
    CHECK(f.l_type == F_UNLCK, "bytes from 60 on are locked (type %d start %ld len %ld)",
          f.l_type, (long)f.l_start, (long)f.l_len);

    errno = 0;
    CHECK(flock(b, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK,
          "the exclusive flock is not held");
    CHECK(flock(d, LOCK_SH | LOCK_NB) == 0, "the shared flock became exclusive");
    CHECK(flock(d, LOCK_UN) == 0 && flock(d, LOCK_EX | LOCK_NB) == -1,
          "the shared flock is not held");

    f = probe(c, F_OFD_GETLK, F_WRLCK, 0, 5);
    CHECK(f.l_type == F_UNLCK, "OFD: bytes 0-4 are locked (type %d)", f.l_type);
    f = probe(c, F_OFD_GETLK, F_RDLCK, 5, 1);
    CHECK(f.l_type == F_WRLCK && f.l_pid == -1 && f.l_start == 5 && f.l_len == 0,
          "OFD write lock from byte 5 on: found type %d pid %d start %ld len %ld", f.l_type,
          f.l_pid, (long)f.l_start, (long)f.l_len);
    f = probe(c, F_OFD_GETLK, F_RDLCK, 1000000, 1);
    CHECK(f.l_type == F_WRLCK, "OFD: the lock does not reach the end of the file");
    f = probe(e, F_OFD_GETLK, F_WRLCK, 0, 0);
    CHECK(f.l_type == F_RDLCK && f.l_pid == -1, "OFD read lock: found type %d pid %d", f.l_type,
          f.l_pid);
    f = probe(e, F_OFD_GETLK, F_RDLCK, 0, 0);
    CHECK(f.l_type == F_UNLCK, "OFD read lock conflicts with a read lock: type %d", f.l_type);
    return fails;
}

int main(int argc, char **argv) {
    SETUP(argc == 3);
    const char *dir = argv[2];
    int a = open_in(dir, "lock-posix"), b = open_in(dir, "lock-flock"),
        d = open_in(dir, "lock-flock-shared"), c = open_in(dir, "lock-ofd"),
        e = open_in(dir, "lock-ofd-read");
    SETUP(ftruncate(a, 100) == 0);
    SETUP(lk(a, F_SETLK, F_WRLCK, 0, 10) == 0);
    SETUP(lk(a, F_SETLK, F_RDLCK, 50, 10) == 0);
    SETUP(flock(b, LOCK_EX | LOCK_NB) == 0);
    SETUP(flock(d, LOCK_SH | LOCK_NB) == 0);
    SETUP(lk(c, F_OFD_SETLK, F_WRLCK, 5, 0) == 0);
    SETUP(lk(e, F_OFD_SETLK, F_RDLCK, 0, 0) == 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    fflush(stderr);
    pid_t me = getpid(), child = fork();
    SETUP(child >= 0);
    if (child == 0)
        _exit(check_from_child(dir, me) ? 1 : 0);
    int st = 0;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the child found the locks not as they were (status %#x)", st);
    return done();
}
