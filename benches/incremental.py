#!/usr/bin/env python3
"""Incremental checkpoint benchmark: a text-like heap (benches/inc_heap.c) with 0.1%, 1% and
10% of its pages rewritten between checkpoints. For each rate, in one run:

- a whole checkpoint without tracking (the baseline), the first checkpoint of a chain (whole,
  arms the tracking) and the incremental checkpoints after it: image bytes, time to durable
  (the report's write_ms) and the application's pause, as ratios to the baseline;
- at 1%: restart time (exec of `forkpoint restart` to the program's exit, one more phase of
  work) from a chain of 1, 10 and 100 links, against the compacted whole image of the same
  state.

    benches/incremental.py [--mib 1024] [--links 100]

Release build (cargo build --release --workspace). One table on stdout.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = os.path.join(ROOT, "target", "release", "forkpoint")


def log(msg):
    print(f"[incremental.py] {msg}", file=sys.stderr, flush=True)


def wait_lines(path, n, proc, timeout=600):
    deadline = time.time() + timeout
    while True:
        try:
            with open(path) as f:
                if sum(1 for _ in f) >= n:
                    return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"program ended early ({proc.returncode})")
        if time.time() > deadline:
            raise SystemExit("timed out waiting for the program")
        time.sleep(0.005)


def checkpoint(pid, incremental):
    args = [FP, "checkpoint", "--timeout", "600s"] + (["--incremental"] if incremental else []) + [str(pid)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    err = out.stderr
    size = os.path.getsize(out.stdout.strip())
    pause = float(re.search(r"paused ([0-9.]+) ms", err).group(1))
    durable = float(re.search(r"durable after ([0-9]+) ms", err).group(1))
    return out.stdout.strip(), size, pause, durable, "incremental image" in err


def run_chain(exe, work, mib, permille, links, full_first):
    """Starts inc_heap, takes `links` checkpoints (the first whole), kills it. Returns the
    checkpoints' (path, bytes, pause ms, durable ms, incremental) and the work dir."""
    os.makedirs(work)
    images = os.path.join(work, "img")
    os.makedirs(images)
    out = os.path.join(work, "run.out")
    env = dict(os.environ, FORKPOINT_RUNTIME_DIR=os.path.join(work, "rt"))
    env.pop("FORKPOINT_LOG", None)
    proc = subprocess.Popen(
        [FP, "run", "--dir", images, "--", exe, str(mib), str(permille), str(links + 1)],
        cwd=work, stdout=open(out, "w"), stderr=subprocess.DEVNULL, env=env)
    results = []
    try:
        for k in range(1, links + 1):
            wait_lines(out, k, proc)
            results.append(checkpoint(proc.pid, incremental=(k > 1 or not full_first)))
            open(os.path.join(work, f"go.{k}"), "w").close()
        wait_lines(out, links + 1, proc)
    finally:
        proc.kill()
        proc.wait()
    open(os.path.join(work, f"go.{links + 1}"), "w").close()
    return results


def restart_time(image, work, k):
    """Exec of `forkpoint restart IMAGE` (taken at "ready k") to the program's first output
    after it, "ready k+1" (one 1% phase of work): its stdout is cut back to the offset the
    image saved, and go.k+1 is absent, so it waits there and is killed."""
    info = json.loads(subprocess.run([FP, "info", "--json", image], capture_output=True,
                                     check=True).stdout)
    offset = next(f["offset"] for f in info["metadata"]["fds"] if f["fd"] == 1)
    out = os.path.join(work, "run.out")
    with open(out, "r+b") as f:
        f.truncate(offset)
    for name in os.listdir(work):
        if name.startswith("go."):
            os.unlink(os.path.join(work, name))
    open(os.path.join(work, f"go.{k}"), "w").close()
    t0 = time.perf_counter()
    p = subprocess.Popen([FP, "restart", image], cwd=work,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while os.path.getsize(out) <= offset:
            if p.poll() is not None:
                raise SystemExit(f"restart of {image} ended ({p.returncode})")
            if time.perf_counter() - t0 > 300:
                raise SystemExit("restart timed out")
            time.sleep(0.0005)
        return time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--links", type=int, default=100)
    ap.add_argument("--restart-only", action="store_true", help="skip the checkpoint table")
    a = ap.parse_args()
    if not os.path.exists(FP):
        raise SystemExit("build first: cargo build --release --workspace")
    tmp = tempfile.mkdtemp(prefix="fp-incbench-")
    try:
        exe = os.path.join(tmp, "inc_heap")
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(ROOT, "benches", "inc_heap.c")], check=True)
        rows = []
        for permille in () if a.restart_only else (1, 10, 100):
            log(f"{permille / 10}% rewritten: baseline, chain of 4")
            base = run_chain(exe, os.path.join(tmp, f"base{permille}"), a.mib, permille, 1, True)[0]
            chain = run_chain(exe, os.path.join(tmp, f"chain{permille}"), a.mib, permille, 4, True)
            incs = [c for c in chain[1:] if c[4]]
            if not incs:
                raise SystemExit("no incremental image was written")
            med = lambda xs: sorted(xs)[len(xs) // 2]
            rows.append((permille / 10, base, chain[0], med([c[1] for c in incs]),
                         med([c[3] for c in incs]), med([c[2] for c in incs])))
            shutil.rmtree(os.path.join(tmp, f"base{permille}"))
            shutil.rmtree(os.path.join(tmp, f"chain{permille}"))
        if rows:
            print(f"\n{a.mib} MiB text-like heap; ratios to a whole checkpoint without tracking\n")
            print("| rewritten | whole: bytes, durable, pause | 1st of chain: pause | incremental: bytes | durable | pause |")
            print("|---|---|---|---|---|---|")
        for pct, base, first, b, d, p in rows:
            print(f"| {pct:g}% | {base[1] / 2**20:.0f} MiB, {base[3]:.0f} ms, {base[2]:.1f} ms "
                  f"| {first[2]:.1f} ms ({first[2] / base[2]:.2f}x) "
                  f"| {b / 2**20:.2f} MiB ({b / base[1]:.3f}x) | {d:.0f} ms ({d / max(base[3], 1):.3f}x) "
                  f"| {p:.1f} ms ({p / base[2]:.2f}x) |")
        log(f"1%: a chain of {a.links} links for the restart times")
        work = os.path.join(tmp, "restart")
        chain = run_chain(exe, work, a.mib, 10, a.links, True)
        print("\n| restart from | time | vs the whole image |\n|---|---|---|")
        for n in sorted({1, 10, a.links}):
            leaf = chain[n - 1][0]
            whole = os.path.join(work, f"whole{n}.fpk")
            subprocess.run([FP, "compact", leaf, "-o", whole], check=True, stderr=subprocess.DEVNULL)
            # Both from the page cache: read each once first.
            for _ in range(2):
                t_whole = restart_time(whole, work, n)
                t_chain = restart_time(leaf, work, n)
            print(f"| chain of {n} | {t_chain * 1000:.0f} ms | {t_chain / t_whole:.2f}x ({t_whole * 1000:.0f} ms) |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
