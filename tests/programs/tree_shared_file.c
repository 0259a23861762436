/* A parent and a child writing one log through one open file description (opened before
 * the fork, no O_APPEND: one offset for both). Prints "ready" once the child runs; after
 * the file "go" appears the child writes its line and exits, then the parent writes its
 * second line and prints the log: each line after the other, none overwritten. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void wait_for_go(void) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    while (access("go", F_OK) != 0)
        nanosleep(&ts, NULL);
}

static int say(int fd, const char *s) { return write(fd, s, strlen(s)) == (ssize_t)strlen(s); }

int main(void) {
    int log = open("shared.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log < 0 || !say(log, "parent before the fork\n"))
        return 1;
    int ready[2];
    if (pipe(ready) != 0)
        return 1;
    pid_t child = fork();
    if (child == 0) {
        if (!say(log, "child started\n") || write(ready[1], "r", 1) != 1)
            _exit(1);
        wait_for_go();
        _exit(say(log, "child after go\n") ? 0 : 1);
    }
    char b;
    if (read(ready[0], &b, 1) != 1)
        return 1;
    printf("ready\n");
    fflush(stdout);
    wait_for_go();
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return 1;
    if (!say(log, "parent after the child\n"))
        return 1;
    close(log);
    char text[256] = {0};
    int in = open("shared.log", O_RDONLY);
    ssize_t n = read(in, text, sizeof text - 1);
    printf("%s", n > 0 ? text : "");
    int ok = strcmp(text, "parent before the fork\nchild started\nchild after go\n"
                          "parent after the child\n") == 0;
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
