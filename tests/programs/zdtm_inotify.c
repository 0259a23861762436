/* zdtm-style test: an inotify descriptor. forkpoint cannot restore its watches (they name
 * inodes, and reopening by handle needs privileges): it puts /dev/null in its place and says
 * so. This program shows what it finds.
 *
 *   zdtm_inotify GO DIR
 *
 * Watches DIR, prints "ready", waits until the file GO exists, then prints "inotify LINK"
 * (what descriptor's /proc/self/fd link is now) and "events N" (events read after creating a
 * file in DIR, -1 if reading failed, 0 if none came within 2 s). Exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

int main(int argc, char **argv) {
    SETUP(argc == 3);
    int in = inotify_init1(IN_NONBLOCK);
    SETUP(in >= 0 && inotify_add_watch(in, argv[2], IN_CREATE) >= 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    char path[64], link[256] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", in);
    SETUP(readlink(path, link, sizeof link - 1) > 0);
    printf("inotify %s\n", link);
    char file[4096];
    snprintf(file, sizeof file, "%s/new-file", argv[2]);
    int fd = open(file, O_WRONLY | O_CREAT, 0644);
    SETUP(fd >= 0);
    close(fd);
    struct pollfd pf = {in, POLLIN, 0};
    int events = 0;
    if (poll(&pf, 1, 2000) == 1) {
        char buf[4096] __attribute__((aligned(8)));
        ssize_t r = read(in, buf, sizeof buf);
        events = r < 0 ? -1 : 0;
        for (ssize_t off = 0; off < r; events++)
            off += (ssize_t)sizeof(struct inotify_event) + ((struct inotify_event *)(buf + off))->len;
    }
    printf("events %d\n", events);
    return done();
}
