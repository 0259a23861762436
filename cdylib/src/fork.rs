//! The fork point: saves the registers a restore resumes with, then forks with a raw `clone`.
//!
//! Async-signal-safe: called from the checkpoint handler; the child side runs on its own
//! stack and never returns into the caller's frames (so the saved stack stays exactly as it
//! was at the fork). In a restored process the restore blob jumps to the saved `rip` with
//! `rax = RESUME_RESTORED`, and `fp_fork` returns that value to its caller.

use core::arch::global_asm;

use forkpoint_image::ResumeRegs;

// fp_fork(regs: *mut ResumeRegs, clone_flags: u64, child_sp: u64, child_fn: extern "C" fn() -> !) -> i64
//
// Stores rbx, rbp, r12-r15, rsp (pointing at our return address) and the resume rip (label
// 2) into *regs, then clone(flags, child_sp, 0, 0, 0). The child starts on child_sp and calls
// child_fn; the parent (and a restored process, resuming at 2) returns rax.
global_asm!(
    ".pushsection .text.fp_fork,\"ax\",@progbits",
    ".globl fp_fork",
    ".hidden fp_fork",
    ".type fp_fork,@function",
    "fp_fork:",
    "    mov [rdi + 0], rbx",
    "    mov [rdi + 8], rbp",
    "    mov [rdi + 16], r12",
    "    mov [rdi + 24], r13",
    "    mov [rdi + 32], r14",
    "    mov [rdi + 40], r15",
    "    mov [rdi + 48], rsp",
    "    lea rax, [rip + 2f]",
    "    mov [rdi + 56], rax",
    "    mov r9, rcx",
    "    mov rdi, rsi",
    "    mov rsi, rdx",
    "    xor edx, edx",
    "    xor r10d, r10d",
    "    xor r8d, r8d",
    "    mov eax, 56",
    "    syscall",
    "    test rax, rax",
    "    jnz 2f",
    "    xor ebp, ebp",
    "    call r9",
    "    ud2",
    "2:",
    "    ret",
    ".size fp_fork, .-fp_fork",
    ".popsection",
);

// fp_save_context(regs: *mut ResumeRegs) -> u64
//
// setjmp without the signal mask: stores the callee-saved registers, the caller's rsp after
// the return and the return address itself (the caller goes on using its stack, so the slot
// holding the return address is soon overwritten), returns 0. A restored thread resumes at
// the return address with rax = RESUME_RESTORED, as if this call had returned that.
global_asm!(
    ".pushsection .text.fp_save_context,\"ax\",@progbits",
    ".globl fp_save_context",
    ".hidden fp_save_context",
    ".type fp_save_context,@function",
    "fp_save_context:",
    "    mov [rdi + 0], rbx",
    "    mov [rdi + 8], rbp",
    "    mov [rdi + 16], r12",
    "    mov [rdi + 24], r13",
    "    mov [rdi + 32], r14",
    "    mov [rdi + 40], r15",
    "    lea rax, [rsp + 8]",
    "    mov [rdi + 48], rax",
    "    mov rax, [rsp]",
    "    mov [rdi + 56], rax",
    "    xor eax, eax",
    "    ret",
    ".size fp_save_context, .-fp_save_context",
    ".popsection",
);

extern "C" {
    fn fp_save_context(regs: *mut ResumeRegs) -> u64;
    fn fp_fork(
        regs: *mut ResumeRegs,
        clone_flags: u64,
        child_sp: u64,
        child_fn: extern "C" fn() -> !,
    ) -> i64;
}

/// Saves the registers a restored thread resumes with. Returns false now, and true when the
/// thread resumes in a restored process.
///
/// Inlined on purpose: the resume point must be in the caller's own frame, which stays alive
/// while the thread waits (a frame of a function that returned would be overwritten).
///
/// # Safety
/// `regs` must be valid for writes; the caller's frame must stay as it is until the
/// checkpoint that uses these registers has forked.
#[inline(always)]
pub unsafe fn save_resume_point(regs: *mut ResumeRegs) -> bool {
    // SAFETY: the caller's contract; fp_save_context follows the C ABI.
    unsafe { fp_save_context(regs) == forkpoint_image::RESUME_RESTORED }
}

/// What the fork point returned.
pub enum Forked {
    /// In the original process: the writer child's pid.
    Parent(i32),
    /// In a process the loader restored from an image.
    Restored,
    /// clone failed with this errno; no child exists.
    Failed(i32),
}

/// Saves the resume registers into `regs` and forks. The child runs `child_fn` on the stack
/// ending at `child_stack_top` (16-byte aligned) and never returns here.
///
/// # Safety
/// `regs` must stay valid (it is read by the child and saved in the image);
/// `child_stack_top` must be the top of a mapped, writable stack nothing else uses.
pub unsafe fn fork_with_resume_point(
    regs: *mut ResumeRegs,
    exit_signal: i32,
    child_stack_top: u64,
    child_fn: extern "C" fn() -> !,
) -> Forked {
    // SAFETY: the caller's contract; fp_fork follows the C ABI and preserves callee-saved
    // registers in the parent.
    let r = unsafe {
        fp_fork(
            regs,
            exit_signal as u64 & 0xff,
            child_stack_top & !15,
            child_fn,
        )
    };
    if r as u64 == forkpoint_image::RESUME_RESTORED {
        Forked::Restored
    } else if r < 0 {
        Forked::Failed(-r as i32)
    } else {
        Forked::Parent(r as i32)
    }
}

// fp_spawn(flags, stack_top, ctid, fn, arg) -> tid or -errno
//
// A raw thread: clone with CLONE_CHILD_CLEARTID at `ctid`; the new thread calls fn(arg) on
// `stack_top` and must end with the exit syscall.
global_asm!(
    ".pushsection .text.fp_spawn,\"ax\",@progbits",
    ".globl fp_spawn",
    ".hidden fp_spawn",
    ".type fp_spawn,@function",
    "fp_spawn:",
    "    push r12",
    "    push r13",
    "    mov r12, rcx",
    "    mov r13, r8",
    "    mov r10, rdx",
    "    xor edx, edx",
    "    xor r8d, r8d",
    "    mov eax, 56",
    "    syscall",
    "    test rax, rax",
    "    jnz 1f",
    "    xor ebp, ebp",
    "    mov rdi, r13",
    "    call r12",
    "    ud2",
    "1:",
    "    pop r13",
    "    pop r12",
    "    ret",
    ".size fp_spawn, .-fp_spawn",
    ".popsection",
);

extern "C" {
    fn fp_spawn(flags: u64, stack_top: u64, ctid: u64, f: extern "C" fn(u64) -> !, arg: u64)
        -> i64;
}

/// Starts a raw thread sharing everything with the caller (TLS included: it must not use
/// it) running `f(arg)` on the stack ending at `stack_top`. The kernel writes 0 to `ctid`
/// and wakes it when the thread exits. Returns its tid.
///
/// # Safety
/// The stack, `ctid` and whatever `arg` points to must outlive the thread; `f` must not
/// touch thread-local state and must end with the exit syscall.
pub unsafe fn spawn_thread(
    stack_top: u64,
    ctid: u64,
    f: extern "C" fn(u64) -> !,
    arg: u64,
) -> Result<i32, i32> {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_CHILD_CLEARTID) as u64;
    // SAFETY: the caller's contract; fp_spawn preserves callee-saved registers in the caller.
    let r = unsafe { fp_spawn(flags, stack_top & !15, ctid, f, arg) };
    if r < 0 {
        Err(-r as i32)
    } else {
        Ok(r as i32)
    }
}

// fp_call_on_stack(arg: u64, f: extern "C" fn(u64), stack_top: u64)
//
// Calls f(arg) with rsp at stack_top (16-byte aligned). The caller's rsp is kept on the new
// stack, not in a register, so a restored process that resumes inside f (its stack is in
// the image) returns here to the caller's frame as the original would.
global_asm!(
    ".pushsection .text.fp_call_on_stack,\"ax\",@progbits",
    ".globl fp_call_on_stack",
    ".hidden fp_call_on_stack",
    ".type fp_call_on_stack,@function",
    "fp_call_on_stack:",
    "    push rbp",
    "    mov rbp, rsp",
    "    mov rsp, rdx",
    "    push rbp",
    "    sub rsp, 8",
    "    call rsi",
    "    add rsp, 8",
    "    pop rsp",
    "    pop rbp",
    "    ret",
    ".size fp_call_on_stack, .-fp_call_on_stack",
    ".popsection",
);

extern "C" {
    fn fp_call_on_stack(arg: u64, f: extern "C" fn(u64), stack_top: u64);
}

/// Runs `f(arg)` on the stack ending at `stack_top`, then returns on the caller's stack.
///
/// # Safety
/// The stack must be mapped, writable and used by nothing else until `f` returns; `f` must
/// not unwind.
pub unsafe fn call_on_stack(arg: u64, f: extern "C" fn(u64), stack_top: u64) {
    // SAFETY: the caller's contract; fp_call_on_stack follows the C ABI.
    unsafe { fp_call_on_stack(arg, f, stack_top & !15) }
}
