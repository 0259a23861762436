/* A parent with a zombie child (exited 7, not reaped, SIGCHLD pending: the parent blocks
 * it), a second one killed by SIGTERM, a live child sharing MAP_SHARED|MAP_ANONYMOUS
 * memory with it, and a child reading its stdin from a pipe whose writer is gone. Prints "ready" when all that is in place; after the file "go" appears,
 * the live child adds to the shared counter and exits 3, and the parent reaps all three by
 * their stored PIDs and prints what it found. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void wait_for_go(void) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    while (access("go", F_OK) != 0)
        nanosleep(&ts, NULL);
}

int main(void) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    volatile long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        return 1;
    shared[0] = 1000;
    pid_t exited = fork();
    if (exited == 0)
        _exit(7);
    pid_t killed = fork();
    if (killed == 0) {
        pause();
        _exit(1);
    }
    pid_t live = fork();
    if (live == 0) {
        shared[1] = 1; /* started */
        wait_for_go();
        for (int i = 0; i < 1000; i++)
            shared[0] += i;
        _exit(3);
    }
    /* A reader whose stdin is a pipe with bytes in flight from a writer already reaped:
     * only the reader holds the pipe now. */
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    pid_t writer = fork();
    if (writer == 0) {
        if (write(fds[1], "bytes in flight\n", 16) != 16)
            _exit(1);
        _exit(0);
    }
    waitpid(writer, NULL, 0);
    pid_t reader = fork();
    if (reader == 0) {
        dup2(fds[0], 0);
        close(fds[0]);
        close(fds[1]);
        wait_for_go();
        char line[64] = {0};
        ssize_t n = read(0, line, sizeof line - 1);
        printf("reader got %zd bytes: %s", n, line);
        _exit(n == 16 ? 0 : 1);
    }
    close(fds[0]);
    close(fds[1]);
    kill(killed, SIGTERM);
    siginfo_t si;
    waitid(P_PID, exited, &si, WEXITED | WNOWAIT);
    waitid(P_PID, killed, &si, WEXITED | WNOWAIT);
    while (shared[1] != 1)
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    wait_for_go();
    sigset_t pending;
    sigpending(&pending);
    printf("sigchld pending: %d\n", sigismember(&pending, SIGCHLD));
    int st1 = 0, st2 = 0, st3 = 0;
    pid_t r1 = waitpid(exited, &st1, 0);
    pid_t r2 = waitpid(killed, &st2, 0);
    pid_t r3 = waitpid(live, &st3, 0);
    int st4 = 0;
    pid_t r4 = waitpid(reader, &st4, 0);
    printf("reader: %s status %d\n", r4 == reader ? "reaped" : "missing",
           WIFEXITED(st4) ? WEXITSTATUS(st4) : -1);
    printf("exited: %s status %d\n", r1 == exited ? "reaped" : "missing",
           WIFEXITED(st1) ? WEXITSTATUS(st1) : -1);
    printf("killed: %s signal %d\n", r2 == killed ? "reaped" : "missing",
           WIFSIGNALED(st2) ? WTERMSIG(st2) : -1);
    printf("live: %s status %d counter %ld\n", r3 == live ? "reaped" : "missing",
           WIFEXITED(st3) ? WEXITSTATUS(st3) : -1, shared[0]);
    int more = waitpid(-1, NULL, WNOHANG);
    printf("no more children: %d\n", more == -1);
    int ok = r1 == exited && r2 == killed && r3 == live && WEXITSTATUS(st1) == 7 &&
             WTERMSIG(st2) == SIGTERM && WEXITSTATUS(st3) == 3 && shared[0] == 1000 + 499500 &&
             more == -1 && r4 == reader && WIFEXITED(st4) && WEXITSTATUS(st4) == 0;
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
