#!/usr/bin/env python3
"""Lazy restart benchmark: time from the exec of `forkpoint restart` to the program's first
useful response, eager vs --lazy, compressed and store-only images, and the time until the
lazy program is fully resident (the helper's "lazy fill done").

    benches/lazy.py [--sizes 64,1024,4096] [--repeat 3] [--no-redis] [--no-python]

Workloads: benches/lazy_server.c (a text-like heap of SIZE MiB, one GET touches a few pages,
SUM touches all and proves the memory right), redis-server with about 400 MB loaded
(DEBUG POPULATE; first PING and first GET), and python3 with heavy imports (first answer,
against a cold start of the same script). Medians of --repeat runs, one table on stdout.
The page cache holds the image in every run (the same for eager and lazy). Needs root: a
lazy restart's userfaultfd needs CAP_SYS_PTRACE (unprivileged, --lazy restores eagerly).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = os.path.join(ROOT, "target", "release", "forkpoint")
# Below the ephemeral range: a connect loop to a port in it can connect to itself.
PORT = 23111


def log(msg):
    print(f"[lazy.py] {msg}", file=sys.stderr, flush=True)


def exchange(port, request, complete, timeout=120.0):
    """Connects (retrying until the server listens), sends request, reads until
    complete(answer) or the server closes, returns the answer."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(request)
                out = b""
                while not complete(out):
                    b = s.recv(65536)
                    if not b:
                        break
                    out += b
                return out
        except (ConnectionRefusedError, ConnectionResetError):
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.0002)


def ask(port, request):
    """One line to benches/lazy_server.c (or the python server), one line back."""
    return exchange(port, request, lambda out: out.endswith(b"\n"))


def wait_for(path, pattern, timeout=300.0):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with open(path, errors="replace") as f:
                m = re.search(pattern, f.read())
            if m:
                return m
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    raise TimeoutError(f"{pattern!r} not in {path} after {timeout}s")


def checkpoint(work, argv, env, ready):
    """Runs argv under forkpoint, waits for `ready` (a regex on its stdout or a callable),
    checkpoints it with --kill, returns (image, stdout text)."""
    out = os.path.join(work, "run.out")
    p = subprocess.Popen(
        [FP, "run", "--dir", work, "--"] + argv,
        stdout=open(out, "w"),
        stderr=open(os.path.join(work, "run.err"), "w"),
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=work,
    )
    try:
        if callable(ready):
            ready()
        else:
            wait_for(out, ready)
        r = subprocess.run(
            [FP, "checkpoint", "--kill", str(p.pid)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            raise RuntimeError(f"checkpoint failed: {r.stderr}")
        p.wait(timeout=60)
        return r.stdout.strip(), open(out).read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def restart_once(image, work, mode, first, check):
    """One restart: seconds from exec to the first answer (`first()`), to fully resident,
    and whether `check()` (every page) held."""
    err = os.path.join(work, f"restart.{mode}.err")
    args = [FP, "restart", "-v", "--lazy" if mode == "lazy" else "--eager", image]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=open(err, "w"),
        stdin=subprocess.DEVNULL,
        cwd=work,
    )
    try:
        first()
        t_first = time.perf_counter() - t0
        if mode == "lazy":
            # Seen on our clock (polled every millisecond).
            wait_for(err, r"lazy fill done")
            t_resident = time.perf_counter() - t0
        else:
            # Eager: resident before the hand-over, so before the first answer.
            t_resident = t_first
        ok = check()
        return t_first, t_resident, ok
    finally:
        p.kill()
        p.wait()


def median(xs):
    return statistics.median(xs)


def row(name, eager, lazy):
    ef, er, eok = eager
    lf, lr, lok = lazy
    ok = "yes" if (eok and lok) else "NO"
    print(
        f"| {name} | {ef * 1e3:.1f} ms | {lf * 1e3:.1f} ms | {lf / ef:.2f}x | "
        f"{er * 1e3:.0f} ms | {lr * 1e3:.0f} ms | {lr / er:.2f}x | {ok} |",
        flush=True,
    )


def measure(image, work, first, check, repeat, wset):
    res = {}
    for mode in ("eager", "lazy"):
        runs = []
        for _ in range(repeat):
            if mode == "lazy" and not wset and os.path.exists(image + ".wset"):
                os.unlink(image + ".wset")
            runs.append(restart_once(image, work, mode, first, check))
        res[mode] = (
            median([r[0] for r in runs]),
            median([r[1] for r in runs]),
            all(r[2] for r in runs),
        )
    return res


def bench_server(sizes, repeat):
    exe = os.path.join(tempfile.mkdtemp(prefix="fp-lazy-bench-"), "lazy_server")
    subprocess.run(
        ["cc", "-O2", "-o", exe, os.path.join(ROOT, "benches", "lazy_server.c")], check=True
    )
    for mib in sizes:
        for level, kind in (("", "compressed"), ("0", "store-only")):
            work = tempfile.mkdtemp(prefix="fp-lazy-bench-")
            try:
                env = dict(os.environ)
                if level:
                    env["FORKPOINT_ZSTD_LEVEL"] = level
                log(f"{mib} MiB, {kind}: checkpoint")
                image, out = checkpoint(work, [exe, str(mib), str(PORT)], env, r"ready (\w+)")
                want = re.search(r"ready (\w+)", out).group(1).encode()
                first = lambda: ask(PORT, b"GET 12345\n")
                check = lambda: ask(PORT, b"SUM\n").strip() == want
                log(f"{mib} MiB, {kind}: restarts")
                res = measure(image, work, first, check, repeat, wset=False)
                row(f"{mib} MiB heap, {kind} ({os.path.getsize(image) >> 20} MiB image)",
                    res["eager"], res["lazy"])
                # Again with the working set the lazy restarts recorded.
                res2 = measure(image, work, first, check, repeat, wset=True)
                row(f"{mib} MiB heap, {kind}, working set known", res2["eager"], res2["lazy"])
            finally:
                shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(os.path.dirname(exe), ignore_errors=True)


def redis_cmd(port, *args):
    req = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    # A status line, or a bulk string's length line and its data.
    complete = lambda out: b"\r\n" in out and not (
        out.startswith(b"$") and out.count(b"\r\n") < 2
    )
    return exchange(port, req.encode(), complete)


def bench_redis(repeat):
    redis = shutil.which("redis-server")
    if not redis:
        log("redis: skipped (redis-server not installed: apt-get install redis-server)")
        return
    work = tempfile.mkdtemp(prefix="fp-lazy-bench-")
    port = PORT + 1
    try:
        argv = [redis, "--port", str(port), "--save", "", "--appendonly", "no",
                "--enable-debug-command", "yes", "--dir", work]

        def ready():
            redis_cmd(port, "PING")
            redis_cmd(port, "DEBUG", "POPULATE", "3000000", "key", "100")

        log("redis: load and checkpoint")
        image, _ = checkpoint(work, argv, dict(os.environ), ready)

        def first():
            assert redis_cmd(port, "PING").startswith(b"+PONG")

        def check():
            return redis_cmd(port, "GET", "key:1234567").startswith(b"$")

        log("redis: restarts (first PING)")
        res = measure(image, work, first, check, repeat, wset=False)
        row(f"redis-server, 3M keys ({os.path.getsize(image) >> 20} MiB image), first PING",
            res["eager"], res["lazy"])

        def first_get():
            r = redis_cmd(port, "GET", "key:2345678")
            assert r.startswith(b"$"), r

        res = measure(image, work, first_get, check, repeat, wset=False)
        row("redis-server, first GET", res["eager"], res["lazy"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


PY_SERVER = r"""
import socket, sys
import json, decimal, asyncio, email.parser, http.server, xml.etree.ElementTree, sqlite3
import multiprocessing, unittest, argparse, logging, ssl, csv, pickle, zipfile, tarfile
try:
    import numpy
    heavy = "numpy " + numpy.__version__
except ImportError:
    heavy = "stdlib only"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("ready", heavy, flush=True)
while True:
    c, _ = s.accept()
    c.recv(64)
    c.sendall(("ok " + heavy + "\n").encode())
    c.close()
"""


def bench_python(repeat):
    py = "/usr/bin/python3"
    work = tempfile.mkdtemp(prefix="fp-lazy-bench-")
    port = PORT + 2
    try:
        script = os.path.join(work, "server.py")
        open(script, "w").write(PY_SERVER)
        # A cold start of the same script, to its first answer.
        colds = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            p = subprocess.Popen([py, script, str(port)], stdout=subprocess.DEVNULL)
            try:
                ask(port, b"hi\n")
                colds.append(time.perf_counter() - t0)
            finally:
                p.kill()
                p.wait()
        cold = median(colds)
        log("python: checkpoint")
        image, out = checkpoint(work, [py, script, str(port)], dict(os.environ), r"ready")
        res = measure(image, work, lambda: ask(port, b"hi\n"),
                      lambda: ask(port, b"hi\n").startswith(b"ok"), repeat, wset=False)
        what = out.split("ready", 1)[1].strip()
        row(f"python3, heavy imports ({what}), first answer", res["eager"], res["lazy"])
        print(f"| python3 cold start of the same script | {cold * 1e3:.1f} ms | "
              f"lazy restart {res['lazy'][0] / cold:.2f}x of it | | | | | |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-python", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        log("note: not root; --lazy restores eagerly without CAP_SYS_PTRACE")
    subprocess.run(["cargo", "build", "--release", "--workspace", "-q"], cwd=ROOT, check=True)
    print("| workload | eager: first response | lazy: first response | lazy/eager | "
          "eager: fully resident | lazy: fully resident | lazy/eager | memory right |")
    print("|---|---|---|---|---|---|---|---|")
    bench_server([int(s) for s in a.sizes.split(",") if s], a.repeat)
    if not a.no_redis:
        bench_redis(a.repeat)
    if not a.no_python:
        bench_python(a.repeat)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()
