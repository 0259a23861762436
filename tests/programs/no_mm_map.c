/* Runs a command with prctl(PR_SET_MM, PR_SET_MM_MAP / PR_SET_MM_MAP_SIZE) refused with EPERM by
 * a seccomp filter: a restart where the kernel does not take the map call (as without
 * CONFIG_CHECKPOINT_RESTORE, or in a container whose seccomp profile refuses it). The single
 * PR_SET_MM_* operations stay allowed. Unprivileged (no_new_privs).
 *
 *   no_mm_map COMMAND [ARGS...] */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARG(n) (offsetof(struct seccomp_data, args) + 8 * (n))

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: no_mm_map COMMAND [ARGS...]\n");
        return 2;
    }
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG(0)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_MM, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG(1)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_MM_MAP, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_MM_MAP_SIZE, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
        perror("no_mm_map: seccomp");
        return 2;
    }
    execvp(argv[1], argv + 1);
    perror("no_mm_map: exec");
    return 127;
}
