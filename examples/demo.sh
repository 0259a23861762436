#!/usr/bin/env bash
# forkpoint in one minute: build, start a counter under forkpoint, checkpoint it, kill it,
# restart it from the image. Run from anywhere: ./examples/demo.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bold() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
show() { printf '$ %s\n' "$*"; }

bold "Building forkpoint (cargo build --release --workspace)"
cargo build --release --workspace
fp="$root/target/release/forkpoint"

work="$(mktemp -d "${TMPDIR:-/tmp}/forkpoint-demo.XXXXXX")"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cc -O2 -o "$work/counter" examples/counter.c

# The counter writes into a pipe (to cat, to this script's output): a restarted program
# inherits a pipe or terminal from `forkpoint restart`, whereas a regular file would be
# reopened at its saved offset and written over.
bold "1. Start a counter under forkpoint (it prints here, in the background)"
show "forkpoint run --dir $work -- counter 16 &"
exec 3> >(cat)
catpid=$!
"$fp" run --dir "$work" -- "$work/counter" 16 >&3 3>&- &
pid=$!
sleep 1.5

bold "2. Checkpoint it while it runs: the image path on stdout, figures on stderr"
show "forkpoint checkpoint $pid"
image="$("$fp" checkpoint "$pid")"
echo "$image"
sleep 0.7

bold "3. Kill it (SIGKILL): the counter stops"
show "kill -9 $pid"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pid=""
sleep 0.5

bold "4. What the image holds"
show "forkpoint info $(basename "$image")"
"$fp" info "$image" | sed -n '1,14p'
echo "  ..."

bold "5. Restart from the image: it counts on from the checkpoint, under a new PID"
show "forkpoint restart $(basename "$image")"
"$fp" restart "$image" >&3 3>&-
exec 3>&-
wait "$catpid" 2>/dev/null || true

bold "Done. The counter resumed at the count after the checkpoint and finished its run."
