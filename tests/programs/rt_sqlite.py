# sqlite3 with a file database in WAL mode, written as it runs: the database, its -wal file
# and its -shm file (mapped shared, with POSIX locks on it and on the database) are open at
# the checkpoint. rt_sqlite.py DIR STEPS HOLD: reads DIR/seed at start, one committed
# transaction and one line per step, waits for DIR/go at step HOLD, ends with a digest of the
# table. Each step writes its own rows (INSERT OR REPLACE): a restored program that redoes
# the steps the killed original did after the checkpoint writes the same rows again.
import hashlib
import os
import sqlite3
import sys
import time

d, steps, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = open(os.path.join(d, "seed")).read().strip()
db = sqlite3.connect(os.path.join(d, "jobs.db"), isolation_level=None)
assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS t (step INTEGER PRIMARY KEY, h TEXT, v INTEGER)")
db.execute("CREATE TABLE IF NOT EXISTS blobs (step INTEGER, k INTEGER, data BLOB, PRIMARY KEY (step, k))")
h = hashlib.sha256(seed.encode()).digest()
for step in range(1, steps + 1):
    if step == hold:
        deadline = time.monotonic() + 600
        while not os.path.exists(os.path.join(d, "go")):
            if time.monotonic() > deadline:
                raise SystemExit("go never appeared")
            time.sleep(0.005)
    for _ in range(200):
        h = hashlib.sha256(h).digest()
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", (step, h.hex(), int.from_bytes(h[:4], "little")))
    for k in range(8):
        db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (step, k, h * (16 + k)))
    db.execute("COMMIT")
    (total,) = db.execute("SELECT sum(v) % 1000003 FROM t WHERE step <= ?", (step,)).fetchone()
    print(f"step {step} {h.hex()[:16]} {total}", flush=True)
rows = db.execute("SELECT step, h, v FROM t ORDER BY step").fetchall()
blobs = db.execute("SELECT step, k, data FROM blobs ORDER BY step, k").fetchall()
(check,) = db.execute("PRAGMA integrity_check").fetchone()
db.close()
digest = hashlib.sha256(repr(rows).encode() + b"".join(b[2] for b in blobs)).hexdigest()
print(f"done {steps} {len(rows)} {len(blobs)} {check} {digest}", flush=True)
