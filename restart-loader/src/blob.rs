//! The restore blob: position-independent code that runs a flat list of syscalls after the
//! loader has unmapped itself, then `rt_sigreturn`s into the restored program.
//!
//! It runs with no libc, no TLS and no stack but its own: only the `global_asm!` below may
//! run there. The list ([`Program`]) is built by safe code in `plan`; each step carries the
//! message printed (with the errno) if it fails.

use core::arch::global_asm;

/// Flag: a failure of this step is reported and the program continues.
pub const MAY_FAIL: u64 = 1;
/// Flag: load `rsp` from the step before the syscall (the final `rt_sigreturn`).
pub const SET_RSP: u64 = 2;
/// Flag: a `clone` step; the new thread goes on with the program whose address is in `rsp`.
pub const CLONE: u64 = 4;
/// Flag: a failure of this step is expected at times and means nothing: no message, go on.
pub const QUIET: u64 = 8;

/// One step: 11 words, as the blob reads them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Op {
    pub nr: u64,
    pub args: [u64; 6],
    pub flags: u64,
    pub msg_ptr: u64,
    pub msg_len: u64,
    pub rsp: u64,
}

pub const OP_WORDS: usize = 11;

// Entered with rdi = program: [n_ops, err_fd, op0, op1, ...].
global_asm!(
    ".pushsection .text.fp_blob,\"ax\",@progbits",
    ".globl fp_blob_start",
    ".globl fp_blob_end",
    ".hidden fp_blob_start",
    ".hidden fp_blob_end",
    "fp_blob_start:",
    "    mov r12, rdi",
    "    mov r13, [r12]",
    "    lea r14, [r12 + 16]",
    "    xor r15d, r15d",
    "1:",
    "    cmp r15, r13",
    "    jae 9f",
    "    mov rax, [r14]",
    "    mov rdi, [r14 + 8]",
    "    mov rsi, [r14 + 16]",
    "    mov rdx, [r14 + 24]",
    "    mov r10, [r14 + 32]",
    "    mov r8, [r14 + 40]",
    "    mov r9, [r14 + 48]",
    "    test qword ptr [r14 + 56], 2",
    "    jz 2f",
    "    mov rsp, [r14 + 80]",
    "2:",
    "    syscall",
    "    cmp rax, -4095",
    "    jae 3f",
    "    test qword ptr [r14 + 56], 4",
    "    jz 4f",
    "    test rax, rax",
    "    jnz 4f",
    "    mov r12, [r14 + 80]",
    "    mov r13, [r12]",
    "    lea r14, [r12 + 16]",
    "    xor r15d, r15d",
    "    jmp 1b",
    "4:",
    "    add r14, 88",
    "    inc r15",
    "    jmp 1b",
    "3:",
    "    test qword ptr [r14 + 56], 8",
    "    jnz 4b",
    "    mov rbx, rax",
    "    neg rbx",
    "    mov eax, 1",
    "    mov rdi, [r12 + 8]",
    "    mov rsi, [r14 + 64]",
    "    mov rdx, [r14 + 72]",
    "    syscall",
    "    sub rsp, 32",
    "    lea rsi, [rsp + 31]",
    "    mov byte ptr [rsi], 10",
    "    mov rax, rbx",
    "    mov ecx, 10",
    "5:",
    "    dec rsi",
    "    xor edx, edx",
    "    div rcx",
    "    add dl, 48",
    "    mov [rsi], dl",
    "    test rax, rax",
    "    jnz 5b",
    "    lea rdx, [rsp + 32]",
    "    sub rdx, rsi",
    "    mov eax, 1",
    "    mov rdi, [r12 + 8]",
    "    syscall",
    "    add rsp, 32",
    "    test qword ptr [r14 + 56], 1",
    "    jnz 4b",
    "    mov eax, 231",
    "    mov edi, 127",
    "    syscall",
    "9:",
    "    ud2",
    "fp_blob_end:",
    ".popsection",
);

extern "C" {
    static fp_blob_start: u8;
    static fp_blob_end: u8;
}

/// The blob's machine code, to be copied into memory that survives the unmapping.
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols delimit the blob in our own text section; start <= end.
    unsafe {
        let start = &fp_blob_start as *const u8;
        let end = &fp_blob_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Jumps to the blob at `entry` with its stack at `stack_top` and `program` in rdi.
///
/// # Safety
/// `entry` must hold the blob code, `program` a valid program, `stack_top` a writable stack;
/// all three must survive every step of the program. Only one thread may exist.
pub unsafe fn jump(entry: u64, stack_top: u64, program: u64) -> ! {
    // SAFETY: the caller's contract; this never returns.
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "jmp {entry}",
            sp = in(reg) stack_top,
            entry = in(reg) entry,
            in("rdi") program,
            options(noreturn)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_layout_matches_the_blob() {
        assert_eq!(core::mem::size_of::<Op>(), OP_WORDS * 8);
        assert!(code().len() > 50 && code().len() < 4096);
    }
}
