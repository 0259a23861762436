/* Deterministic test data: gen BYTES KIND SEED > file
 * KIND "random": xorshift64* bytes (incompressible).
 * KIND "text": lines of pseudo-random words (compresses like prose, about 4:1).
 * KIND "mixed": per MiB, 32 KiB of text then a line repeated (xz gets through it quickly). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t s;
static uint64_t next(void) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1DULL;
}

static const char *words[] = {
    "checkpoint", "restart", "fork", "image", "page", "memory", "signal", "thread",
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "process", "kernel",
    "file", "write", "read", "offset", "chunk", "zstd", "compress", "map", "stack",
    "heap", "register", "restore", "loader", "library", "durable", "pause", "copy",
    "on", "with", "for", "as", "was", "by", "at", "from", "this", "be", "or", "an",
    "vdso", "descriptor", "pipe", "socket", "terminal", "output", "input", "data",
    "simulation", "step", "value", "sum", "hash", "chain", "digest", "byte",
};

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: gen BYTES random|text|mixed SEED\n");
        return 2;
    }
    unsigned long long want = strtoull(argv[1], 0, 10);
    int text = strcmp(argv[2], "text") == 0;
    int mixed = strcmp(argv[2], "mixed") == 0;
    if (!text && !mixed && strcmp(argv[2], "random") != 0) {
        fprintf(stderr, "gen: unknown kind %s\n", argv[2]);
        return 2;
    }
    unsigned long long block = 0;
    s = strtoull(argv[3], 0, 10) * 0x9E3779B97F4A7C15ULL + 1;
    static char buf[1 << 16];
    unsigned long long done = 0;
    size_t nwords = sizeof words / sizeof *words;
    while (done < want) {
        size_t n = 0;
        if (mixed && done % (1 << 20) >= (1 << 15)) {
            /* The rest of this MiB: one line, repeated. */
            char line[128];
            int l = sprintf(line, "block %llu of repeated filler, same line again %llu\n", block, block * 7919 % 1000);
            while (n + (size_t)l <= sizeof buf) {
                memcpy(buf + n, line, (size_t)l);
                n += (size_t)l;
            }
            unsigned long long to_boundary = (1 << 20) - done % (1 << 20);
            if (n >= to_boundary) {
                n = (size_t)to_boundary;
                block++;
            }
        } else if (text || mixed) {
            size_t limit = sizeof buf - 64;
            if (mixed) {
                unsigned long long left = (1 << 15) - done % (1 << 20);
                if (left < limit) limit = (size_t)left;
            }
            while (n < limit) {
                uint64_t r = next();
                const char *w = words[r % nwords];
                size_t l = strlen(w);
                memcpy(buf + n, w, l);
                n += l;
                buf[n++] = (r >> 32) % 11 == 0 ? '\n' : ' ';
                if ((r >> 40) % 37 == 0) n += (size_t)sprintf(buf + n, "%llu ", (unsigned long long)(r >> 44));
            }
        } else {
            for (; n + 8 <= sizeof buf; n += 8) {
                uint64_t r = next();
                memcpy(buf + n, &r, 8);
            }
        }
        if (n > want - done) n = (size_t)(want - done);
        if (fwrite(buf, 1, n, stdout) != n) {
            perror("gen: write");
            return 1;
        }
        done += n;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
