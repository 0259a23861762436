/* zdtm-style test: an epoll instance keeps its interest list (events, flags and data) and
 * reports exactly the ready descriptors after a restart.
 *
 *   zdtm_epoll GO
 *
 * Prints "ready", waits until the file GO exists, then checks from inside that the state is
 * exactly as before; exit 0 and "PASS" only if so, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int by_text(const void *a, const void *b) { return strcmp(a, b); }

/* The "tfd: N events: X data: Y" entries of /proc/self/fdinfo/EP, as sorted text (the
 * kernel lists them in the order of its tree, which depends on addresses). */
static void interest(int ep, char *out, size_t cap) {
    char path[64], line[512], items[16][64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
    FILE *f = fopen(path, "r");
    out[0] = 0;
    if (!f)
        return;
    while (n < 16 && fgets(line, sizeof line, f)) {
        int fd;
        unsigned events;
        unsigned long long data;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &fd, &events, &data) == 3)
            snprintf(items[n++], sizeof items[0], "%d:%x:%llx ", fd, events, data);
    }
    fclose(f);
    qsort(items, n, sizeof items[0], by_text);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s", items[i]);
    }
}

/* epoll_wait with timeout 0: the data words reported, in a bitmask of slots (see below). */
static int ready_set(int ep, uint64_t *datas, int nd, uint32_t *evs) {
    struct epoll_event out[16];
    int n = epoll_wait(ep, out, 16, 0), mask = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < nd; k++)
            if (out[i].data.u64 == datas[k]) {
                mask |= 1 << k;
                evs[k] = out[i].events;
            }
    return n < 0 ? -1 : mask;
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    int p[2], sp[2];
    SETUP(pipe(p) == 0);
    int ev0 = eventfd(0, EFD_NONBLOCK), ev5 = eventfd(5, EFD_NONBLOCK);
    SETUP(ev0 >= 0 && ev5 >= 0);
    SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    SETUP(ep >= 0);
    /* Slots: 0 pipe (not ready), 1 ev0 (not ready), 2 ev5 (ready, edge-triggered),
     * 3 socket end (writable), 4 other socket end (nothing to read). */
    uint64_t datas[5] = {0x1111, 0x2222, 0xdeadbeefcafe0001ULL, 0x4444, 0x5555};
    int fds[5] = {p[0], ev0, ev5, sp[0], sp[1]};
    uint32_t events[5] = {EPOLLIN, EPOLLIN, EPOLLIN | EPOLLET, EPOLLOUT, EPOLLIN | EPOLLRDHUP};
    for (int k = 0; k < 5; k++) {
        struct epoll_event e = {.events = events[k], .data.u64 = datas[k]};
        SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, fds[k], &e) == 0);
    }
    char before[1024], after[1024];
    interest(ep, before, sizeof before);
    SETUP(strlen(before) > 0);
    printf("ready\n");
    fflush(stdout);

    wait_go(argv[1]);

    interest(ep, after, sizeof after);
    CHECK(strcmp(before, after) == 0, "interest list '%s', was '%s'", after, before);
    CHECK(fcntl(ep, F_GETFD) & FD_CLOEXEC, "lost FD_CLOEXEC");
    uint32_t evs[5] = {0};
    int m = ready_set(ep, datas, 5, evs);
    CHECK(m == ((1 << 2) | (1 << 3)), "ready set %#x, expected ev5 and the writable socket (0xc)",
          m);
    CHECK(evs[2] == EPOLLIN && evs[3] == EPOLLOUT, "events %#x %#x", evs[2], evs[3]);
    /* Edge-triggered: ev5 is not reported again until it changes. */
    m = ready_set(ep, datas, 5, evs);
    CHECK(m == (1 << 3), "second ready set %#x, expected only the writable socket (0x8)", m);
    SETUP(write(p[1], "x", 1) == 1);
    uint64_t one = 1;
    SETUP(write(ev0, &one, 8) == 8);
    m = ready_set(ep, datas, 5, evs);
    CHECK(m == ((1 << 0) | (1 << 1) | (1 << 3)), "after two writes: ready set %#x, not 0xb", m);
    SETUP(write(sp[0], "y", 1) == 1);
    m = ready_set(ep, datas, 5, evs);
    CHECK(m & (1 << 4), "the socket end with data is not reported: %#x", m);
    return done();
}
