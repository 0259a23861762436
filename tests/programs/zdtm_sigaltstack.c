/* zdtm-style test: threads with small signal stacks (Rust gives every thread an 8 KiB one, Go
 * one per thread) are checkpointed and restarted. The library's handler runs on the signal
 * stack (SA_ONSTACK, as Go requires), so it must fit in one.
 *
 *   zdtm_sigaltstack GO
 *
 * The main thread and a worker each install a signal stack of max(8 KiB, AT_MINSIGSTKSZ)
 * above a PROT_NONE guard page (an overflow faults instead of corrupting memory) and count
 * until GO exists. Then each checks its signal stack is still the one it installed and that
 * a SA_ONSTACK handler of its own runs on it. Exit 0 and "PASS" only if all hold. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>

#include "zdtm.h"

#ifndef AT_MINSIGSTKSZ
#define AT_MINSIGSTKSZ 51
#endif

static const char *go_file;
static atomic_int worker_ready;
static __thread volatile uintptr_t handler_sp;

static void on_usr1(int sig) {
    volatile char here = 0;
    (void)sig;
    handler_sp = (uintptr_t)&here;
}

static size_t stack_size(void) {
    size_t min = getauxval(AT_MINSIGSTKSZ);
    return min > 8192 ? min : 8192;
}

/* A signal stack above a guard page; returns its base. */
static char *install(void) {
    size_t len = stack_size(), page = 4096;
    len = (len + page - 1) & ~(page - 1);
    char *p = mmap(NULL, len + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SETUP(p != MAP_FAILED);
    SETUP(mprotect(p, page, PROT_NONE) == 0);
    stack_t ss = {.ss_sp = p + page, .ss_size = len};
    SETUP(sigaltstack(&ss, NULL) == 0);
    return p + page;
}

static void check(const char *who, char *base) {
    stack_t now;
    CHECK(sigaltstack(NULL, &now) == 0, "%s: sigaltstack", who);
    CHECK(now.ss_sp == base && now.ss_flags == 0, "%s: the signal stack is %p (flags %d), not %p",
          who, now.ss_sp, now.ss_flags, (void *)base);
    handler_sp = 0;
    CHECK(pthread_kill(pthread_self(), SIGUSR1) == 0, "%s: pthread_kill", who);
    size_t len = stack_size();
    CHECK(handler_sp > (uintptr_t)base && handler_sp < (uintptr_t)base + len + 4096,
          "%s: the handler ran at %#lx, not on its signal stack at %p", who,
          (unsigned long)handler_sp, (void *)base);
}

static void *worker(void *arg) {
    (void)arg;
    char *base = install();
    atomic_store(&worker_ready, 1);
    volatile uint64_t n = 0;
    while (access(go_file, F_OK) != 0)
        n++;
    check("worker", base);
    return NULL;
}

int main(int argc, char **argv) {
    SETUP(argc == 2);
    go_file = argv[1];
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
    char *base = install();
    pthread_t w;
    SETUP(pthread_create(&w, NULL, worker, NULL) == 0);
    while (!atomic_load(&worker_ready))
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    volatile uint64_t n = 0;
    while (access(go_file, F_OK) != 0) {
        n++;
        if (n % 4096 == 0)
            usleep(100);
    }
    check("main", base);
    CHECK(pthread_join(w, NULL) == 0, "join the worker");
    return done();
}
