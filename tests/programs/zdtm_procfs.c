/* zdtm-style test: a descriptor open on the process's own /proc files (monitoring code keeps
 * /proc/self/stat or /proc/self/status open and rereads it). The kernel names them
 * /proc/PID/..., with the PID of the checkpointed process; after a restart they must be the
 * restarted process's files.
 *
 *   zdtm_procfs GO
 *
 * Prints "ready", waits until the file GO exists, then rereads them; exit 0 and "PASS" only
 * if they describe this process, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

int main(int argc, char **argv) {
    SETUP(argc == 2);
    int stat = open("/proc/self/stat", O_RDONLY);
    int status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    SETUP(stat >= 0 && status >= 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    char b[4096] = {0};
    CHECK(pread(stat, b, sizeof b - 1, 0) > 0 && atoi(b) == getpid(),
          "/proc/self/stat reread through its descriptor names pid %d, not %d", atoi(b), getpid());
    memset(b, 0, sizeof b);
    char want[64];
    snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
    CHECK(pread(status, b, sizeof b - 1, 0) > 0 && strstr(b, want) != NULL,
          "/proc/self/status reread through its descriptor is not this process's");
    CHECK(fcntl(status, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    return done();
}
