//! Four `std::thread` workers fed through mpsc channels, with a `thread_local!` counter and
//! per-step scoped threads:
//!
//!     rust_threads OUTDIR STEPS DELAY_MS HOLD_STEP
//!
//! Each step the main thread sends one job to each worker on its own channel; the workers
//! answer on one shared channel; the main thread orders the answers by worker, prints a
//! checksum line, and sleeps DELAY_MS. Every fourth step it also runs two scoped threads
//! (created and joined within the step). At step HOLD_STEP (0: never) it waits until
//! OUTDIR/go exists. The workers' state starts from OUTDIR/seed (read once at start): a test
//! changes that file after the checkpoint, so a program started again would print other
//! numbers. The output depends on nothing but the arguments and the seed.
//!
//! Built standalone with `rustc -O`, or run from the end-to-end test binary itself (which
//! includes this file as a module and calls `run`).

use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const WORKERS: usize = 4;
const ROUNDS: u64 = 200_000;

thread_local! {
    static JOBS_DONE: Cell<u64> = const { Cell::new(0) };
}

fn mix(h: u64, v: u64) -> u64 {
    let h = h ^ v
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(h << 6)
        .wrapping_add(h >> 2);
    h.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

fn chain(mut h: u64, rounds: u64) -> u64 {
    for i in 0..rounds {
        h = mix(h, i);
    }
    h
}

#[allow(dead_code)]
fn main() {
    std::process::exit(run(std::env::args().skip(1).collect()));
}

/// The program; returns its exit code.
pub fn run(args: Vec<String>) -> i32 {
    if args.len() != 4 {
        eprintln!("usage: rust_threads OUTDIR STEPS DELAY_MS HOLD_STEP");
        return 2;
    }
    let outdir = Path::new(&args[0]);
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let (steps, delay_ms, hold_step) = (num(1), num(2), num(3));
    let seed: u64 = std::fs::read_to_string(outdir.join("seed"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4242);

    let (answers_tx, answers) = mpsc::channel::<(usize, u64, u64)>();
    let mut jobs = Vec::new();
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let (tx, rx) = mpsc::channel::<u64>();
        let answers_tx = answers_tx.clone();
        jobs.push(tx);
        let handle = thread::Builder::new()
            .name(format!("rust-worker-{w}"))
            .spawn(move || {
                // State on this thread's stack and heap, carried across the steps.
                let mut state = mix(seed, w as u64 + 1);
                let mut history: Vec<u64> = Vec::new();
                for step in rx {
                    let n = JOBS_DONE.with(|c| {
                        c.set(c.get() + 1);
                        c.get()
                    });
                    let r = chain(state ^ step, ROUNDS + (w as u64) * 1000);
                    state = mix(state, r ^ n);
                    history.push(r);
                    answers_tx.send((w, step, r)).expect("main thread gone");
                }
                history.iter().fold(state, |h, &r| mix(h, r))
            })
            .expect("spawn worker");
        handles.push(handle);
    }
    drop(answers_tx);

    let stdout = std::io::stdout();
    let mut sum = seed;
    for step in 1..=steps {
        if step == hold_step {
            let go = outdir.join("go");
            // Bounded: a test that never releases us should not leave us running forever.
            for _ in 0..600_000 {
                if go.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        for tx in &jobs {
            tx.send(step).expect("worker gone");
        }
        let mut got = [0u64; WORKERS];
        for _ in 0..WORKERS {
            let (w, s, r) = answers.recv().expect("workers gone");
            assert_eq!(s, step, "worker {w} answered for another step");
            got[w] = r;
        }
        for r in got {
            sum = mix(sum, r);
        }
        if step % 4 == 0 {
            let parts: Vec<u64> = thread::scope(|s| {
                let a = s.spawn(|| chain(sum, 50_000));
                let b = s.spawn(|| chain(!sum, 50_000));
                vec![a.join().unwrap(), b.join().unwrap()]
            });
            sum = mix(sum, parts[0] ^ parts[1].rotate_left(17));
        }
        let mut out = stdout.lock();
        writeln!(out, "step {step} {sum:016x}").expect("write stdout");
        out.flush().expect("flush stdout");
        drop(out);
        thread::sleep(Duration::from_millis(delay_ms));
    }
    drop(jobs);
    let mut joined = 0u64;
    for h in handles {
        joined = mix(joined, h.join().expect("worker panicked"));
    }
    let mut out = stdout.lock();
    writeln!(out, "done {steps} {joined:016x}").expect("write stdout");
    out.flush().expect("flush stdout");
    0
}
