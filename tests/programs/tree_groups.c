/* Sessions and process groups in a tree: child A is a session leader (setsid), child B
 * leads its own process group with its child B1 in it, child C stays in the root's group.
 * Prints "ready" once all that is in place; after the file "go" appears, each checks its
 * relations again, B's whole group is signalled (kill(-B)), and the root prints what each
 * found and PASS or FAIL. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void wait_for_go(void) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    while (access("go", F_OK) != 0)
        nanosleep(&ts, NULL);
}

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

/* Exit code 0 if `ok`, 1 otherwise; with SIGUSR1 wanted, waits for it first. */
static void finish(int ok, int want_usr1) {
    if (want_usr1) {
        while (!got_usr1)
            usleep(1000);
    }
    _exit(ok ? 0 : 1);
}

int main(void) {
    int ready[2];
    if (pipe(ready) != 0)
        return 1;
    signal(SIGUSR1, on_usr1);
    pid_t a = fork();
    if (a == 0) {
        setsid();
        if (write(ready[1], "a", 1) != 1) _exit(2);
        wait_for_go();
        finish(getsid(0) == getpid() && getpgid(0) == getpid(), 0);
    }
    pid_t b = fork();
    if (b == 0) {
        setpgid(0, 0);
        pid_t b1 = fork();
        if (b1 == 0) {
            if (write(ready[1], "1", 1) != 1) _exit(2);
            wait_for_go();
            finish(getpgid(0) == getppid() && getsid(0) == getsid(getppid()), 1);
        }
        if (write(ready[1], "b", 1) != 1) _exit(2);
        wait_for_go();
        int st = 0;
        int ok = getpgid(0) == getpid() && getsid(0) == getsid(getppid());
        while (!got_usr1)
            usleep(1000);
        ok = ok && waitpid(b1, &st, 0) == b1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        _exit(ok ? 0 : 1);
    }
    pid_t c = fork();
    if (c == 0) {
        if (write(ready[1], "c", 1) != 1) _exit(2);
        wait_for_go();
        finish(getpgid(0) == getpgid(getppid()) && getsid(0) == getsid(getppid()), 0);
    }
    char buf;
    for (int i = 0; i < 4; i++)
        if (read(ready[0], &buf, 1) != 1)
            return 1;
    printf("ready\n");
    fflush(stdout);
    wait_for_go();
    /* The restarted root's group and session are forkpoint restart's: compare relations,
     * not numbers. */
    int rel_ok = getpgid(b) == b && getsid(a) == a && getpgid(c) == getpgid(0);
    usleep(50000);
    kill(-b, SIGUSR1);
    int ok = rel_ok;
    pid_t kids[3] = {a, b, c};
    const char *names[3] = {"session leader", "group leader", "same group"};
    for (int i = 0; i < 3; i++) {
        int st = 0;
        int good = waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s: %s\n", names[i], good ? "ok" : "wrong");
        ok = ok && good;
    }
    printf("relations seen by the root: %s\n", rel_ok ? "ok" : "wrong");
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
