/* zdtm-style test: shared memory is saved as it was at the checkpoint, not as the running
 * program rewrote it while the image was being written.
 *
 *   zdtm_shm GO anon|sysv|memfd [linked]
 *
 * Maps 8 MiB of shared memory (MAP_SHARED|MAP_ANONYMOUS, a SysV segment, or a memfd mapped
 * MAP_SHARED) and rewrites it without pause: each round writes the round number into a
 * private variable, then into the first word of every page. At the start of each round every
 * page must hold the private round number: a snapshot whose shared pages were copied later
 * than its private memory breaks that (pages from later rounds). Prints "ready" after 100
 * rounds, runs on until the file GO exists, then checks 3 more rounds. With memfd and "linked", also
 * checks that the mapping and the descriptor still share their pages. Exit 0 and "PASS" only
 * if all is consistent, "FAIL" lines on stderr otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define PAGES 2048
#define WORDS_PER_PAGE (4096 / sizeof(uint64_t))

int main(int argc, char **argv) {
    SETUP(argc == 3 || argc == 4);
    const char *mode = argv[2];
    int linked = argc == 4 && strcmp(argv[3], "linked") == 0;
    size_t len = (size_t)PAGES * 4096;
    volatile uint64_t *mem = NULL;
    int mfd = -1;
    if (strcmp(mode, "anon") == 0) {
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        SETUP(p != MAP_FAILED);
        mem = p;
    } else if (strcmp(mode, "sysv") == 0) {
        int id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
        SETUP(id >= 0);
        void *p = shmat(id, NULL, 0);
        /* Removed at once: it goes away with its last user, even after a kill -9. */
        SETUP(p != (void *)-1 && shmctl(id, IPC_RMID, NULL) == 0);
        mem = p;
    } else if (strcmp(mode, "memfd") == 0) {
        mfd = memfd_create("zdtm-shm", 0);
        SETUP(mfd >= 0 && ftruncate(mfd, len) == 0);
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        SETUP(p != MAP_FAILED);
        mem = p;
    } else {
        SETUP(!"a known mode");
    }
    volatile uint64_t round = 0;
    int after_go = 0;
    double end = mono() + 600;
    for (;;) {
        /* Start of a round: every page holds the round number. */
        for (size_t k = 0; k < PAGES; k++)
            if (mem[k * WORDS_PER_PAGE] != round) {
                fprintf(stderr,
                        "FAIL: page %zu of %d holds round %llu, but the program is at round "
                        "%llu: the shared memory was not saved with the rest\n",
                        k, PAGES, (unsigned long long)mem[k * WORDS_PER_PAGE],
                        (unsigned long long)round);
                return 1;
            }
        if (after_go && ++after_go > 3)
            break;
        if (!after_go && round >= 100 && access(argv[1], F_OK) == 0)
            after_go = 1;
        if (mono() > end) {
            fprintf(stderr, "FAIL: %s did not appear within 600 s\n", argv[1]);
            return 3;
        }
        round++;
        for (size_t k = 0; k < PAGES; k++)
            mem[k * WORDS_PER_PAGE] = round;
        if (round == 100) {
            printf("ready\n");
            fflush(stdout);
        }
    }
    if (mfd >= 0 && linked) {
        uint64_t v = 0;
        mem[5] = 0x1234567890abcdefULL;
        CHECK(pread(mfd, &v, 8, 40) == 8 && v == 0x1234567890abcdefULL,
              "a write through the mapping is not seen through the memfd");
        v = 0xfedcba0987654321ULL;
        CHECK(pwrite(mfd, &v, 8, 48) == 8 && mem[6] == v,
              "a write through the memfd is not seen through the mapping");
    }
    return done();
}
