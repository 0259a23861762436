#!/usr/bin/env bash
# Quick pause/write measurement: forkpoint vs bare fork() and zstd -1 on the same bytes.
# usage: benches/quick.sh MIB PATTERN [EXTRA_THREADS]   (uses target/release; build it first)
set -euo pipefail
MIB=${1:-256}; PAT=${2:-text}; THREADS=${3:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FP=$ROOT/target/release/forkpoint
W=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$W"' EXIT
gcc -O2 -pthread -o "$W/workload" "$ROOT/examples/workload.c"
"$FP" run --dir "$W" -- "$W/workload" "$MIB" "$PAT" "$W/dump.bin" "$THREADS" > "$W/out.txt" &
PID=$!
wait_for() { for _ in $(seq 1 600); do grep -q "$1" "$W/out.txt" && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; exit 1; }
wait_for ready
forks=()
for i in 1 2 3; do kill -USR2 $PID; wait_for "fork_us.*" ; n=$(grep -c fork_us "$W/out.txt"); while [ "$n" -lt "$i" ]; do sleep 0.05; n=$(grep -c fork_us "$W/out.txt"); done; done
FORK=$(grep fork_us "$W/out.txt" | awk '{print $2}' | sort -n | sed -n 2p)
kill -USR1 $PID; sleep 0.3
t0=$(date +%s%N)
IMG=$("$FP" checkpoint $PID 2>"$W/ck.txt")
t1=$(date +%s%N)
sleep 0.3; kill -USR1 $PID; sleep 0.3
STALL=$(grep stall_us "$W/out.txt" | tail -1 | awk '{print $2}')
t2=$(date +%s%N); zstd -q -1 -T$(nproc) -f "$W/dump.bin" -o "$W/dump.zst"; t3=$(date +%s%N)
echo "size=${MIB}MiB pattern=$PAT threads=$((THREADS+1))"
echo "  app stall during checkpoint: ${STALL} us   bare fork(): ${FORK} us   ratio $(echo "scale=2; $STALL/$FORK" | bc)"
echo "  checkpoint until durable: $(( (t1-t0)/1000000 )) ms   zstd -1 -T$(nproc): $(( (t3-t2)/1000000 )) ms"
echo "  image: $(stat -c %s "$IMG") bytes   zstd: $(stat -c %s "$W/dump.zst") bytes"
cat "$W/ck.txt"
