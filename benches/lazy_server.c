/* The lazy-restart benchmark's server: a text-like heap of MIB MiB, served on
 * 127.0.0.1:PORT. Each connection sends one line: "GET i" answers 64 bytes of the heap
 * (a few pages touched: the "first useful response"), "SUM" the FNV-1a of the whole heap
 * (every page touched: proves the restored memory right). Prints "ready SUM" once up.
 * Usage: lazy_server MIB PORT */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    size_t len = strtoul(argv[1], 0, 10) << 20;
    unsigned char *heap = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) return 1;
    static const char *words[] = {"request ", "response ", "latency ", "restart ", "page ",
                                  "fault ", "chunk ", "image\n", "memory ", "server "};
    uint32_t x = 7;
    for (size_t i = 0; i < len;) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % 10];
        for (size_t k = 0; w[k] && i < len; k++) heap[i++] = (unsigned char)w[k];
        if ((x >> 8) % 61 == 0 && i + 8 < len) i += (size_t)sprintf((char *)heap + i, "%u ", x % 99991);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 16)) { perror("listen"); return 1; }
    printf("ready %016llx\n", (unsigned long long)fnv(heap, len));
    fflush(stdout);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        char line[64] = {0};
        ssize_t n = read(c, line, sizeof line - 1);
        char out[128];
        int m = 0;
        if (n > 4 && !strncmp(line, "GET ", 4)) {
            size_t at = (size_t)(strtoull(line + 4, 0, 10) * 2654435761ULL) % (len - 64);
            memcpy(out, heap + at, 64);
            out[64] = '\n';
            m = 65;
        } else if (n >= 3 && !strncmp(line, "SUM", 3)) {
            m = sprintf(out, "%016llx\n", (unsigned long long)fnv(heap, len));
        }
        if (m > 0 && write(c, out, m) < 0) perror("write");
        close(c);
    }
}
