/* zdtm-style test: a file mapped MAP_SHARED is the file itself after a restart.
 *
 *   zdtm_shared_file GO FILE
 *
 * Maps the 4 pages of FILE read-write and shared (as the JVM maps its hsperfdata counters),
 * counts in its first word until GO exists, then checks that the mapping and the file (read
 * again by path) hold the same bytes, writes through the mapping and sees it in the file, and
 * prints the byte at offset 100 (the test may write it between the checkpoint and the
 * restart). Exit 0 and "PASS" only if the mapping and the file agree. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#include "zdtm.h"

#define LEN (4 * 4096)

int main(int argc, char **argv) {
    SETUP(argc == 3);
    int fd = open(argv[2], O_RDWR);
    SETUP(fd >= 0);
    volatile uint8_t *mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    SETUP(mem != MAP_FAILED);
    close(fd);
    volatile uint64_t *counter = (volatile uint64_t *)mem;
    *counter = 1;
    printf("ready\n");
    fflush(stdout);
    while (access(argv[1], F_OK) != 0)
        (*counter)++;

    static uint8_t disk[LEN];
    fd = open(argv[2], O_RDWR);
    SETUP(fd >= 0);
    CHECK(pread(fd, disk, LEN, 0) == LEN, "read the file again");
    CHECK(memcmp(disk, (const void *)mem, LEN) == 0, "the mapping and the file differ");
    mem[200] = 'Z';
    CHECK(pread(fd, disk, LEN, 0) == LEN && disk[200] == 'Z',
          "a write through the mapping did not reach the file");
    printf("byte 100: %c\n", mem[100] ? mem[100] : '0');
    return done();
}
