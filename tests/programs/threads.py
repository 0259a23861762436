# Four threading workers, each fed through its own queue.Queue, with threading.local state:
#   threads.py STEPS ROUNDS DELAY_S HOLD_STEP OUTDIR
# Each step the main thread sends one job to every worker and collects the answers from a
# shared queue, orders them by worker and prints a checksum line. At step HOLD_STEP (0:
# never) it waits until OUTDIR/go exists. The workers' state starts from OUTDIR/seed (read
# once at start): a test changes that file after the checkpoint, so a program started again
# would print other numbers. The output depends on nothing but the arguments and the seed.
import hashlib
import os
import queue
import sys
import threading
import time

WORKERS = 4
steps, rounds = int(sys.argv[1]), int(sys.argv[2])
delay, hold_step, outdir = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    with open(os.path.join(outdir, "seed")) as f:
        seed = int(f.read().strip())
except (OSError, ValueError):
    seed = 4242

local = threading.local()
answers = queue.Queue()
lock = threading.Lock()
totals = {}


def worker(w, jobs):
    local.h = hashlib.sha256(f"worker {w} seed {seed}".encode()).digest()
    local.jobs = 0
    while True:
        step = jobs.get()
        if step is None:
            break
        h = local.h
        for _ in range(rounds):
            h = hashlib.sha256(h + step.to_bytes(4, "little")).digest()
        local.h = h
        local.jobs += 1
        answers.put((w, step, h[:8].hex()))
    with lock:
        totals[w] = (local.jobs, local.h.hex())


queues = [queue.Queue() for _ in range(WORKERS)]
threads = [
    threading.Thread(target=worker, args=(w, q), name=f"py-worker-{w}")
    for w, q in enumerate(queues)
]
for t in threads:
    t.start()

digest = hashlib.sha256(str(seed).encode())
for step in range(1, steps + 1):
    if step == hold_step:
        go = os.path.join(outdir, "go")
        for _ in range(600000):
            if os.path.exists(go):
                break
            time.sleep(0.001)
    for q in queues:
        q.put(step)
    got = sorted(answers.get() for _ in range(WORKERS))
    for w, s, h in got:
        assert s == step, (w, s, step)
        digest.update(h.encode())
    print(f"step {step} {' '.join(h for _, _, h in got)} {digest.hexdigest()[:16]}", flush=True)
    time.sleep(delay)

for q in queues:
    q.put(None)
for t in threads:
    t.join()
print(f"done {steps} {sorted(totals.items())}", flush=True)
