# numpy with OpenBLAS threads: a matrix loop whose products run on OpenBLAS's worker threads
# (OPENBLAS_NUM_THREADS=2 from the test). rt_numpy.py DIR STEPS HOLD: reads DIR/seed at start,
# one line per step, waits for DIR/go at step HOLD, ends with a digest of the final matrix.
import hashlib
import os
import sys
import time

import numpy as np

d, steps, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = int(open(os.path.join(d, "seed")).read())
rng = np.random.default_rng(seed)
n = 256
a = rng.standard_normal((n, n))
b = rng.standard_normal((n, n)) / np.sqrt(n)
kept = []
for step in range(1, steps + 1):
    if step == hold:
        deadline = time.monotonic() + 600
        while not os.path.exists(os.path.join(d, "go")):
            if time.monotonic() > deadline:
                raise SystemExit("go never appeared")
            time.sleep(0.005)
    a = a @ b
    a /= np.linalg.norm(a) / n
    kept.append(a[step % n].copy())
    h = hashlib.sha256(a.tobytes()).hexdigest()[:16]
    print(f"step {step} {h} {float(a.trace()):.6e}", flush=True)
print(f"done {steps} {hashlib.sha256(np.concatenate(kept).tobytes()).hexdigest()}", flush=True)
