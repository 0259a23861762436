#!/bin/sh
# Pause of a tree checkpoint vs a bare fork of its slowest member, in one run.
#
#   benches/tree.sh [MB_PER_PROCESS] [RUNS]     (defaults: 16 MiB, 3 checkpoints per size)
#
# For N = 1, 4, 16, 64 processes of MB MiB each: `forkpoint checkpoint --tree` RUNS times;
# reports the median longest member pause, the median time until all members had stopped
# (from the CLI's start: listing the tree and signalling included), and the pause as a ratio
# to two baselines measured in the same run: a bare fork() of one member-sized process, and
# N such processes forking at the same moment (the longest of the N forks: on a machine
# with fewer cores than N, the forks of a cut queue for the CPUs). Release build.
set -eu
MB=${1:-16}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --workspace --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
FP=$ROOT/target/release/forkpoint
export FORKPOINT_LIB=$ROOT/target/release/libforkpoint.so
W=$(mktemp -d /tmp/fp-tree-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
cc -O2 -o "$W/tree_members" "$ROOT/benches/tree_members.c"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
FORK=$(for i in 1 2 3; do "$W/tree_members" fork "$MB" | awk '{print $2}'; done | median)
printf 'bare fork of a %s MiB process: %s ms (median)\n' "$MB" "$FORK"
printf '%4s %12s %10s %14s %12s %10s\n' N pause_ms vs_fork N_forks_ms vs_N_forks all_stopped_ms
for N in 1 4 16 64; do
    NF=$("$W/tree_members" forks "$N" "$MB" | awk '{print $2}')
    FORKPOINT_RUNTIME_DIR=$W/rt "$FP" run -- "$W/tree_members" "$N" "$MB" >"$W/out" 2>"$W/err" &
    ROOTPID=$!
    i=0
    until grep -q ready "$W/out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 6000 ] || { echo "tree of $N not ready" >&2; exit 1; }
        sleep 0.01
    done
    : >"$W/pauses"; : >"$W/stops"
    for r in $(seq "$RUNS"); do
        "$FP" checkpoint --tree -o "$W/img.fpk" "$ROOTPID" 2>"$W/ck" >/dev/null
        sed -n 's/.*longest pause \([0-9.]*\) ms.*/\1/p' "$W/ck" >>"$W/pauses"
        sed -n 's/.*all stopped after \([0-9.]*\) ms.*/\1/p' "$W/ck" >>"$W/stops"
        rm -f "$W/img.fpk"
    done
    P=$(median <"$W/pauses"); S=$(median <"$W/stops")
    printf '%4s %12s %10s %14s %12s %10s\n' "$N" "$P" "$(echo "$P $FORK" | awk '{printf "%.2fx", $1/$2}')" \
        "$NF" "$(echo "$P $NF" | awk '{printf "%.2fx", $1/$2}')" "$S"
    pkill -KILL -P "$ROOTPID" 2>/dev/null || true
    kill -KILL "$ROOTPID" 2>/dev/null || true
    wait "$ROOTPID" 2>/dev/null || true
done
