/* zdtm-style test: locks held across the checkpoint are still their holders' after a restart,
 * and threads restored from the image can still be signalled by their pthread_t.
 *
 *   zdtm_held_locks GO
 *
 * The main thread and a worker each hold a recursive and an error-checking mutex when the
 * program prints "ready" (glibc records the owner's TID in both), and the worker holds a plain
 * mutex the main thread waits for after GO. After GO each relocks its recursive mutex
 * (trylock: a wrong owner would be EBUSY, not a hang) and unlocks its error-checking one (a
 * wrong owner is EPERM); the main thread signals the worker with pthread_kill and
 * pthread_sigqueue and checks its handler ran in the worker; then both release, the main
 * thread takes the worker's mutexes, and joins it. The other calls that reach the kernel by a
 * thread's TID work on restored threads too: pthread_getattr_np on itself (HotSpot's stack
 * check), the worker's CPU clock from pthread_getcpuclockid, and its affinity read and set.
 * Exit 0 and "PASS" only if all hold. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>

#include "zdtm.h"

static pthread_mutex_t main_rec, main_chk, w_rec, w_chk;
static pthread_mutex_t w_plain = PTHREAD_MUTEX_INITIALIZER;
static atomic_int worker_ready, worker_go, worker_done;
static atomic_int usr1_in_worker, usr2_value;
static atomic_long worker_tid;
static const char *go_file;

static void init_mutex(pthread_mutex_t *m, int kind) {
    pthread_mutexattr_t a;
    SETUP(pthread_mutexattr_init(&a) == 0);
    SETUP(pthread_mutexattr_settype(&a, kind) == 0);
    SETUP(pthread_mutex_init(m, &a) == 0);
    pthread_mutexattr_destroy(&a);
}

static void on_usr1(int sig) {
    (void)sig;
    if (syscall(SYS_gettid) == worker_tid)
        atomic_fetch_add(&usr1_in_worker, 1);
}

static void on_usr2(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    if (syscall(SYS_gettid) == worker_tid && si->si_code == SI_QUEUE)
        atomic_store(&usr2_value, si->si_value.sival_int);
}

/* Waits up to 60 s for *flag to reach want. */
static int wait_for(atomic_int *flag, int want) {
    double end = mono() + 60;
    while (atomic_load(flag) < want) {
        if (mono() > end)
            return 0;
        usleep(1000);
    }
    return 1;
}

static void *worker(void *arg) {
    (void)arg;
    SETUP(pthread_mutex_lock(&w_rec) == 0);
    SETUP(pthread_mutex_lock(&w_chk) == 0);
    SETUP(pthread_mutex_lock(&w_plain) == 0);
    atomic_store(&worker_tid, syscall(SYS_gettid));
    atomic_store(&worker_ready, 1);
    /* Holds all three across the checkpoint, until the main thread saw GO. */
    if (!wait_for(&worker_go, 1)) {
        fprintf(stderr, "FAIL: the worker was never let go\n");
        exit(3);
    }
    atomic_store(&worker_tid, syscall(SYS_gettid)); /* this run's, for the handlers */
    int e = pthread_mutex_trylock(&w_rec);
    CHECK(e == 0, "worker: relocking its recursive mutex gave %d", e);
    if (e == 0)
        CHECK(pthread_mutex_unlock(&w_rec) == 0, "worker: recursive unlock (inner)");
    e = pthread_mutex_unlock(&w_chk);
    CHECK(e == 0, "worker: unlocking its error-checking mutex gave %d", e);
    atomic_store(&worker_done, 1);
    /* Wait for the signals, then let the main thread take the rest. */
    double end = mono() + 60;
    while ((atomic_load(&usr1_in_worker) < 1 || atomic_load(&usr2_value) != 4242) && mono() < end)
        usleep(1000);
    e = pthread_mutex_unlock(&w_rec);
    CHECK(e == 0, "worker: recursive unlock (outer) gave %d", e);
    e = pthread_mutex_unlock(&w_plain);
    CHECK(e == 0, "worker: plain unlock gave %d", e);
    return NULL;
}

int main(int argc, char **argv) {
    SETUP(argc >= 2);
    go_file = argv[1];
    init_mutex(&main_rec, PTHREAD_MUTEX_RECURSIVE);
    init_mutex(&main_chk, PTHREAD_MUTEX_ERRORCHECK);
    init_mutex(&w_rec, PTHREAD_MUTEX_RECURSIVE);
    init_mutex(&w_chk, PTHREAD_MUTEX_ERRORCHECK);
    SETUP(signal(SIGUSR1, on_usr1) != SIG_ERR);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO;
    SETUP(sigaction(SIGUSR2, &sa, NULL) == 0);
    SETUP(pthread_mutex_lock(&main_rec) == 0);
    SETUP(pthread_mutex_lock(&main_chk) == 0);
    pthread_t w;
    SETUP(pthread_create(&w, NULL, worker, NULL) == 0);
    SETUP(wait_for(&worker_ready, 1));
    printf("ready\n");
    fflush(stdout);
    wait_go(go_file);

    int e = pthread_mutex_trylock(&main_rec);
    CHECK(e == 0, "main: relocking its recursive mutex gave %d", e);
    if (e == 0)
        CHECK(pthread_mutex_unlock(&main_rec) == 0, "main: recursive unlock (inner)");
    CHECK(pthread_mutex_unlock(&main_rec) == 0, "main: recursive unlock (outer)");
    e = pthread_mutex_unlock(&main_chk);
    CHECK(e == 0, "main: unlocking its error-checking mutex gave %d", e);
    CHECK(pthread_mutex_trylock(&main_chk) == 0, "main: its error-checking mutex is free");
    CHECK(pthread_mutex_unlock(&main_chk) == 0, "main: error-checking unlock");

    atomic_store(&worker_go, 1);
    CHECK(wait_for(&worker_done, 1), "the worker did not get past its locks");

    pthread_attr_t attr;
    e = pthread_getattr_np(pthread_self(), &attr);
    CHECK(e == 0, "pthread_getattr_np(self) gave %d", e);
    if (e == 0) {
        void *stack;
        size_t stack_size;
        CHECK(pthread_attr_getstack(&attr, &stack, &stack_size) == 0 && stack_size > 0,
              "pthread_attr_getstack(self)");
        CHECK((char *)&attr > (char *)stack && (char *)&attr < (char *)stack + stack_size,
              "the main thread's stack holds its locals");
        pthread_attr_destroy(&attr);
    }
    clockid_t cpu;
    e = pthread_getcpuclockid(w, &cpu);
    CHECK(e == 0, "pthread_getcpuclockid(worker) gave %d", e);
    struct timespec ts;
    CHECK(e != 0 || clock_gettime(cpu, &ts) == 0, "clock_gettime(worker's CPU clock): %s",
          strerror(errno));
    cpu_set_t set;
    e = pthread_getaffinity_np(w, sizeof set, &set);
    CHECK(e == 0 && CPU_COUNT(&set) > 0, "pthread_getaffinity_np(worker) gave %d", e);
    if (e == 0) {
        e = pthread_setaffinity_np(w, sizeof set, &set);
        CHECK(e == 0, "pthread_setaffinity_np(worker) gave %d", e);
    }
    e = pthread_kill(w, 0);
    CHECK(e == 0, "pthread_kill(worker, 0) gave %d", e);
    e = pthread_kill(w, SIGUSR1);
    CHECK(e == 0, "pthread_kill(worker, SIGUSR1) gave %d", e);
    union sigval v = {.sival_int = 4242};
    e = pthread_sigqueue(w, SIGUSR2, v);
    CHECK(e == 0, "pthread_sigqueue(worker, SIGUSR2) gave %d", e);
    CHECK(wait_for(&usr1_in_worker, 1), "SIGUSR1 from pthread_kill did not reach the worker");
    double end = mono() + 60;
    while (atomic_load(&usr2_value) != 4242 && mono() < end)
        usleep(1000);
    CHECK(atomic_load(&usr2_value) == 4242, "SIGUSR2 from pthread_sigqueue did not reach the worker with its value");

    /* The worker's mutexes are free once it let go of them. */
    CHECK(pthread_mutex_lock(&w_plain) == 0, "main: the worker's plain mutex");
    e = pthread_mutex_trylock(&w_rec);
    CHECK(e == 0, "main: the worker's recursive mutex gave %d", e);
    e = pthread_mutex_trylock(&w_chk);
    CHECK(e == 0, "main: the worker's error-checking mutex gave %d", e);
    CHECK(pthread_join(w, NULL) == 0, "join the worker");
    return done();
}
