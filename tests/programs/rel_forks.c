/* Process creation under checkpoints: a program that keeps forking, vforking, executing
 * and exiting, so that checkpoint requests arrive while it is in the middle of it.
 *
 *   rel_forks loop OUTDIR ITERS DELAY_US HOLD_ITER
 *       Each iteration does one of, in turn:
 *         0  fork(); the child hashes the parent's memory (copy-on-write), sends the hash
 *            through a pipe and _exit()s; the parent reads it and reaps the child;
 *         1  vfork(); the child _exit()s with a code the parent checks;
 *         2  vfork() + execve() of this program ("child" mode, exits with a code);
 *         3  fork() + execve() of this program ("child" mode, exits with a code);
 *       then mallocs and frees a little, and prints a line (flushed), then sleeps DELAY_US
 *       as long as OUTDIR/go does not exist (once it does, it runs on at full speed).
 *       Before iteration HOLD_ITER (0: never) it waits until OUTDIR/go exists.
 *
 *   rel_forks chain OUTDIR GEN GENS LINES DELAY_US
 *       Prints LINES lines (flushed, DELAY_US apart) as generation GEN, then execve()s
 *       itself as generation GEN+1, up to GENS; the last one prints "chain done". The
 *       process keeps its PID, its stdout (and offset) across the execs.
 *
 *   rel_forks child CODE
 *       Exits with CODE (used by the execve cases).
 *
 * The output depends on nothing but the arguments and OUTDIR/seed (read once at start).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t state[8192]; /* 64 KiB the fork children hash */
static const char *outdir;
static char self[4096];

static uint64_t mix(uint64_t a, uint64_t v) {
    a ^= v + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2);
    return a * 0xff51afd7ed558ccdULL;
}

static void die(const char *what) {
    fprintf(stderr, "rel_forks: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t read_seed(void) {
    char *p;
    uint64_t v = 4242;
    if (asprintf(&p, "%s/seed", outdir) < 0) die("asprintf");
    FILE *f = fopen(p, "r");
    if (f) {
        unsigned long long x;
        if (fscanf(f, "%llu", &x) == 1) v = x;
        fclose(f);
    }
    free(p);
    return v;
}

static void hold(void) {
    char *go;
    if (asprintf(&go, "%s/go", outdir) < 0) die("asprintf");
    for (int i = 0; i < 600000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, 0);
    }
    free(go);
}

/* Waits for `pid` (retrying on EINTR) and returns its exit code; anything else is fatal. */
static int reap(pid_t pid, const char *what) {
    int st;
    pid_t r;
    while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
    }
    if (r != pid) die(what);
    if (!WIFEXITED(st)) {
        fprintf(stderr, "rel_forks: %s: child ended with status %#x\n", what, st);
        exit(1);
    }
    return WEXITSTATUS(st);
}

static void exec_child(int code) {
    char arg[16];
    snprintf(arg, sizeof arg, "%d", code);
    char *const av[] = {self, "child", arg, 0};
    execv(self, av);
    _exit(127);
}

static int loop(long iters, long delay_us, long hold_iter) {
    uint64_t h = read_seed();
    char *go;
    if (asprintf(&go, "%s/go", outdir) < 0) die("asprintf");
    int released = 0;
    for (size_t i = 0; i < sizeof state / sizeof state[0]; i++) state[i] = mix(h, i);
    setvbuf(stdout, 0, _IOFBF, 1 << 16);
    for (long it = 1; it <= iters; it++) {
        if (it == hold_iter) hold();
        int mode = (int)(it % 4);
        int code = (int)((h >> 8) % 100);
        uint64_t got = 0;
        state[h % 8192] ^= (uint64_t)it;
        if (mode == 0) {
            int fds[2];
            if (pipe(fds) != 0) die("pipe");
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                uint64_t c = 0;
                for (size_t i = 0; i < 8192; i++) c = mix(c, state[i]);
                ssize_t w = write(fds[1], &c, sizeof c);
                _exit(w == (ssize_t)sizeof c ? 0 : 1);
            }
            close(fds[1]);
            ssize_t n;
            while ((n = read(fds[0], &got, sizeof got)) < 0 && errno == EINTR) {
            }
            if (n != (ssize_t)sizeof got) die("read from the fork child");
            close(fds[0]);
            if (reap(pid, "fork child") != 0) die("fork child failed");
        } else if (mode == 1) {
            pid_t pid = vfork();
            if (pid < 0) die("vfork");
            if (pid == 0) _exit(code);
            got = (uint64_t)reap(pid, "vfork child");
            if ((int)got != code) die("vfork child exit code");
        } else if (mode == 2) {
            pid_t pid = vfork();
            if (pid < 0) die("vfork");
            if (pid == 0) exec_child(code);
            got = (uint64_t)reap(pid, "vfork+exec child");
            if ((int)got != code) die("vfork+exec child exit code");
        } else {
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) exec_child(code);
            got = (uint64_t)reap(pid, "fork+exec child");
            if ((int)got != code) die("fork+exec child exit code");
        }
        void *p = malloc(1000 + (size_t)(h % 50000));
        if (!p) die("malloc");
        memset(p, (int)it, 1000);
        h = mix(mix(h, got), ((unsigned char *)p)[999]);
        free(p);
        printf("iter %ld mode %d got %016llx h %016llx\n", it, mode, (unsigned long long)got,
               (unsigned long long)h);
        fflush(stdout);
        if (delay_us > 0 && !released) {
            released = access(go, F_OK) == 0;
            if (!released) usleep((useconds_t)delay_us);
        }
    }
    free(go);
    printf("loop done, %ld iterations, h %016llx\n", iters, (unsigned long long)h);
    fflush(stdout);
    return 0;
}

static int chain(long gen, long gens, long lines, long delay_us) {
    uint64_t h = mix(read_seed(), (uint64_t)gen);
    for (long i = 1; i <= lines; i++) {
        h = mix(h, (uint64_t)i);
        printf("gen %ld line %ld h %016llx\n", gen, i, (unsigned long long)h);
        fflush(stdout);
        if (delay_us > 0) usleep((useconds_t)delay_us);
    }
    if (gen >= gens) {
        printf("chain done after %ld generations\n", gens);
        fflush(stdout);
        return 0;
    }
    char g[24], gs[24], ls[24], ds[24];
    snprintf(g, sizeof g, "%ld", gen + 1);
    snprintf(gs, sizeof gs, "%ld", gens);
    snprintf(ls, sizeof ls, "%ld", lines);
    snprintf(ds, sizeof ds, "%ld", delay_us);
    char *const av[] = {self, "chain", (char *)outdir, g, gs, ls, ds, 0};
    execv(self, av);
    die("execv");
    return 1;
}

int main(int argc, char **argv) {
    /* The program to execute again: argv[0] when it is absolute (the tests start it so).
     * Not /proc/self/exe: a checkpoint can come before main, and a process restarted
     * without CAP_CHECKPOINT_RESTORE has forkpoint's binary there (documented). */
    if (argv[0][0] == '/' && strlen(argv[0]) < sizeof self) {
        strcpy(self, argv[0]);
    } else {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) die("readlink /proc/self/exe");
        self[n] = 0;
    }
    if (argc == 3 && strcmp(argv[1], "child") == 0) return atoi(argv[2]);
    if (argc == 6 && strcmp(argv[1], "loop") == 0) {
        outdir = argv[2];
        return loop(atol(argv[3]), atol(argv[4]), atol(argv[5]));
    }
    if (argc == 7 && strcmp(argv[1], "chain") == 0) {
        outdir = argv[2];
        return chain(atol(argv[3]), atol(argv[4]), atol(argv[5]), atol(argv[6]));
    }
    fprintf(stderr,
            "usage: rel_forks loop OUTDIR ITERS DELAY_US HOLD_ITER\n"
            "       rel_forks chain OUTDIR GEN GENS LINES DELAY_US\n"
            "       rel_forks child CODE\n");
    return 2;
}
