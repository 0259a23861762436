# A hash chain that prints its progress: hashchain.py STEPS ROUNDS DELAY_S HOLD_STEP GOFILE
# At step HOLD_STEP (0: never) it waits until GOFILE exists, so a test can act mid-run.
# Keeps state in Python objects (a dict and a list that grow) as well as the chain.
import hashlib
import os
import sys
import time

steps, rounds = int(sys.argv[1]), int(sys.argv[2])
delay, hold_step, go = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
h = b"forkpoint"
seen = {}
history = []
for step in range(1, steps + 1):
    if step == hold_step:
        for _ in range(600000):
            if os.path.exists(go):
                break
            time.sleep(0.001)
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    seen[h[:4]] = step
    history.append(int.from_bytes(h[:8], "little") % 1000003)
    print(f"step {step} {h.hex()} {len(seen)} {sum(history) % 1000003}", flush=True)
    time.sleep(delay)
print(f"done {steps} {hashlib.sha256(repr(sorted(seen.items())).encode()).hexdigest()}", flush=True)
