/* zdtm-style test: process attributes survive a restart: umask, rlimits, nice, the
 * parent-death signal, child subreaper, no_new_privs, personality, the working directory,
 * the thread name, and what /proc/self/cmdline and /proc/self/environ show.
 *
 *   zdtm_attrs GO DIR [nodump]
 *
 * Sets them (the working directory becomes DIR; with "nodump" the process also makes
 * itself not dumpable, as ssh-agent or gpg-agent do), prints "ready", waits until the file GO
 * exists, then checks from inside that each is exactly as before; exit 0 and "PASS" only if
 * so, "FAIL" lines on stderr otherwise. Also prints "exe PATH" (/proc/self/exe after the
 * restart: informational, forkpoint cannot always change it). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static void on_usr2(int s) { (void)s; }

/* Reads a whole /proc file into buf; returns its length. */
static size_t slurp(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY);
    size_t got = 0;
    ssize_t r;
    if (fd < 0)
        return 0;
    while (got < cap && (r = read(fd, buf + got, cap - got)) > 0)
        got += (size_t)r;
    close(fd);
    return got;
}

int main(int argc, char **argv) {
    SETUP(argc == 3 || argc == 4);
    int nodump = argc == 4 && strcmp(argv[3], "nodump") == 0;
    signal(SIGUSR2, on_usr2);
    SETUP(prctl(PR_SET_PDEATHSIG, SIGUSR2) == 0);
    umask(027);
    struct rlimit nofile, core;
    SETUP(getrlimit(RLIMIT_NOFILE, &nofile) == 0 && getrlimit(RLIMIT_CORE, &core) == 0);
    nofile.rlim_cur = 200;
    core.rlim_cur = 0;
    SETUP(setrlimit(RLIMIT_NOFILE, &nofile) == 0 && setrlimit(RLIMIT_CORE, &core) == 0);
    errno = 0;
    SETUP(setpriority(PRIO_PROCESS, 0, 7) == 0);
    SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
    int pers = personality(0xffffffff);
    SETUP(personality(pers | ADDR_NO_RANDOMIZE) != -1);
    pers = personality(0xffffffff);
    SETUP(chdir(argv[2]) == 0);
    char cwd[4096];
    SETUP(getcwd(cwd, sizeof cwd) != NULL);
    SETUP(prctl(PR_SET_NAME, "zdtm-attrs") == 0);
    static char cmdline[8192], environ_[65536], buf[65536];
    size_t cmdline_len = slurp("/proc/self/cmdline", cmdline, sizeof cmdline);
    size_t environ_len = slurp("/proc/self/environ", environ_, sizeof environ_);
    SETUP(cmdline_len > 0 && environ_len > 0);
    SETUP(getenv("ZDTM_MARK") != NULL);
    if (nodump)
        SETUP(prctl(PR_SET_DUMPABLE, 0) == 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    CHECK(prctl(PR_GET_DUMPABLE) == !nodump, "dumpable %d, not %d", prctl(PR_GET_DUMPABLE),
          !nodump);
    mode_t m = umask(0);
    umask(m);
    CHECK(m == 027, "umask %03o, not 027", m);
    struct rlimit r;
    CHECK(getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur == 200 && r.rlim_max == nofile.rlim_max,
          "RLIMIT_NOFILE %lu/%lu, not 200/%lu", (unsigned long)r.rlim_cur,
          (unsigned long)r.rlim_max, (unsigned long)nofile.rlim_max);
    CHECK(getrlimit(RLIMIT_CORE, &r) == 0 && r.rlim_cur == 0 && r.rlim_max == core.rlim_max,
          "RLIMIT_CORE %lu/%lu", (unsigned long)r.rlim_cur, (unsigned long)r.rlim_max);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    CHECK(nice == 7, "nice %d, not 7", nice);
    int pd = -1;
    CHECK(prctl(PR_GET_PDEATHSIG, &pd) == 0 && pd == SIGUSR2, "parent-death signal %d, not %d",
          pd, SIGUSR2);
    int sub = -1;
    CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub) == 0 && sub == 1, "child subreaper %d", sub);
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs is off");
    CHECK(personality(0xffffffff) == pers, "personality %#x, not %#x", personality(0xffffffff),
          pers);
    char now[4096] = {0};
    CHECK(getcwd(now, sizeof now) && strcmp(now, cwd) == 0, "cwd '%s', not '%s'", now, cwd);
    char name[32] = {0};
    CHECK(prctl(PR_GET_NAME, name) == 0 && strcmp(name, "zdtm-attrs") == 0, "thread name '%s'",
          name);
    size_t n = slurp("/proc/self/cmdline", buf, sizeof buf);
    CHECK(n == cmdline_len && memcmp(buf, cmdline, n) == 0,
          "/proc/self/cmdline is '%.*s' (%zu bytes), not the program's command line", (int)n, buf,
          n);
    n = slurp("/proc/self/environ", buf, sizeof buf);
    CHECK(n == environ_len && memcmp(buf, environ_, n) == 0,
          "/proc/self/environ is not the program's environment (%zu bytes, not %zu)", n,
          environ_len);
    CHECK(getenv("ZDTM_MARK") && strcmp(getenv("ZDTM_MARK"), "present") == 0, "ZDTM_MARK lost");
    int fd = open("created", O_WRONLY | O_CREAT | O_TRUNC, 0666);
    struct stat st;
    CHECK(fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0640,
          "a file created with 0666 has mode %03o, not 640", st.st_mode & 0777);
    if (fd >= 0)
        close(fd);
    unlink("created");
    char exe[4096] = {0};
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) > 0)
        printf("exe %s\n", exe);
    return done();
}
