#!/usr/bin/env bash
# forkpoint benchmark (issue 5): pause, time to a durable image, image size and restart time,
# each next to a baseline measured in the same run on the same workload: a bare fork(),
# `zstd -1 -T<cpus>` on the same bytes, zstd decompression on all CPUs, and CRIU where it works.
#
#   cargo build --release --workspace && benches/run.sh [options]
#
#   --large              add 4096 MiB to the sizes (default sizes: 256 1024)
#   --sizes "S ..."      sizes in MiB (replaces the default list)
#   --patterns "P ..."   workload patterns (default: text random sparse zero)
#   --runs N             repetitions per case, the median is reported (default 3; 1 for >= 4 GiB)
#   --level L            FORKPOINT_ZSTD_LEVEL for the checkpoints (default: the library's default)
#   --threads N          extra workload threads that keep writing to the buffer (default 0)
#   --app-write R        the workload rewrites R MiB/s of its buffer (0: it only spins) instead
#                        of all of it every few ms (the default, the worst case for copy-on-write)
#   --no-criu            skip the CRIU columns
#   --no-criu-install    never try `apt-get install criu`
#                        (CRIU=/path/to/criu selects the binary; default target/criu/criu, built by
#                        benches/build-criu.sh, else criu in PATH)
#   --workdir DIR        where the workload, its dump, the images live (default: a new dir in $TMPDIR or /tmp)
#   --out DIR            where results.md / results.csv go (default: target/bench)
#   --build              run `cargo build --release --workspace` first
#
# Prints one Markdown table row per case on stdout (progress on stderr), then writes
# OUT/results.md (table, details, environment, targets missed) and OUT/results.csv.
# Nothing here asserts a timing: the script exits 0 whenever the measurements could be taken.
# Every wait is bounded; every process started is killed by PID and every file removed on exit.
set -uo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FP=$ROOT/target/release/forkpoint
LIB=$ROOT/target/release/libforkpoint.so
SIZES="256 1024"
PATTERNS="text random sparse zero"
RUNS=""
LEVEL=""
THREADS=0
APPWRITE=-
CRIU_WANTED=1
CRIU_INSTALL=1
WORKBASE=""
OUT=$ROOT/target/bench
BUILD=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --large) SIZES="$SIZES 4096" ;;
        --sizes) SIZES=$2; shift ;;
        --patterns) PATTERNS=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --level) LEVEL=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --app-write) APPWRITE=$2; shift ;;
        --no-criu) CRIU_WANTED=0 ;;
        --no-criu-install) CRIU_INSTALL=0 ;;
        --workdir) WORKBASE=$2; shift ;;
        --out) OUT=$2; shift ;;
        --build) BUILD=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

NPROC=$(nproc)
log() { printf '[%6.1fs] %s\n' "$(( ${EPOCHREALTIME/./} - BENCH_T0 ))e-6" "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }
BENCH_T0=${EPOCHREALTIME/./}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- processes and cleanup
CHILDREN=()   # our own children (waitable)
FOREIGN=()    # processes that are not our children (CRIU-restored tasks)
W=""
cleanup() {
    [ -n "${BENCH_KEEP_LOG:-}" ] && [ -n "$W" ] && cp -f "$W/workload.err" "$BENCH_KEEP_LOG" 2>/dev/null
    local p
    for p in "${CHILDREN[@]}" "${FOREIGN[@]}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null; done
    for p in "${CHILDREN[@]}" "${FOREIGN[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do alive "$p" || break; sleep 0.1; done
        [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
    done
    for p in "${CHILDREN[@]}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
    [ -n "$W" ] && [ -d "$W" ] && rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

forget() { # remove PID $1 from the lists
    local i
    for i in "${!CHILDREN[@]}"; do [ "${CHILDREN[$i]}" = "$1" ] && unset 'CHILDREN[i]'; done
    for i in "${!FOREIGN[@]}"; do [ "${FOREIGN[$i]}" = "$1" ] && unset 'FOREIGN[i]'; done
}

# alive PID: the process exists and is not a zombie.
alive() { local st; st=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }

# stop PID [child]: SIGTERM (the workload exits cleanly), SIGKILL after 5 s; reaps children.
stop() {
    local p=$1 i
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 1 250); do alive "$p" || break; sleep 0.02; done
    kill -KILL "$p" 2>/dev/null
    for i in $(seq 1 250); do alive "$p" || break; sleep 0.02; done
    [ "${2:-}" = child ] && wait "$p" 2>/dev/null
    forget "$p"
    return 0
}

# wait_count FILE REGEX N TIMEOUT_S [PID]: until FILE has N lines matching REGEX; fails on
# timeout or when PID died.
wait_count() {
    local f=$1 re=$2 n=$3 deadline=$(( ${EPOCHREALTIME/./} + $4 * 1000000 )) pid=${5:-}
    while :; do
        [ "$(grep -ac -- "$re" "$f" 2>/dev/null)" -ge "$n" ] && return 0
        [ -n "$pid" ] && ! alive "$pid" && return 1
        [ "${EPOCHREALTIME/./}" -gt "$deadline" ] && return 1
        sleep 0.01
    done
}

# After removing large files: commit the journal, then wait (at most 30 s) until the disk
# has no request in flight and has stopped discarding. With `-o discard`, ext4 discards freed
# blocks after the commit, in the background, which can take the disk for a while: the next
# measurement must not pay for the previous one's files.
BENCH_DEV=""
settle_fs() {
    timeout 120 sync -f "$W" 2>/dev/null || true
    [ -z "$BENCH_DEV" ] && BENCH_DEV=$(basename "$(findmnt -no SOURCE -T "$W" 2>/dev/null)" 2>/dev/null)
    local prev="" cur i
    for i in $(seq 1 150); do
        cur=$(awk -v d="$BENCH_DEV" '$3 == d { print $12 ":" $15 ":" $17 }' /proc/diskstats 2>/dev/null)
        [ -z "$cur" ] && return 0
        [ "$cur" = "$prev" ] && [ "${cur%%:*}" = 0 ] && return 0
        prev=$cur
        sleep 0.2
    done
}
median() { # numbers as arguments ("" and "-" ignored); prints the median or "-"
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b+0 == 0) print "-"; else printf "%.2f\n", a/b }'; }
human() { awk -v b="$1" 'BEGIN { if (b !~ /^[0-9]+$/) print "-"; else if (b >= 1048576) printf "%.1f MiB\n", b/1048576; else if (b >= 1024) printf "%.1f KiB\n", b/1024; else printf "%d B\n", b }'; }

# report PID OUTFILE: SIGUSR1 to the workload, wait for its new "stall_us" line; sets
# REP_STALL (us), REP_LOOPS, REP_US, REP_FLT, REP_AT (us after the previous report).
report() {
    local n
    n=$(grep -ac '^stall_us' "$2")
    kill -USR1 "$1" 2>/dev/null || return 1
    wait_count "$2" '^stall_us' $((n + 1)) 20 "$1" || return 1
    read -r _ REP_STALL _ REP_LOOPS _ REP_US _ REP_FLT _ REP_AT < <(grep -a '^stall_us' "$2" | sed -n "$((n + 1))p")
}

# first_tick_after OUTFILE START_US: ms from START_US to the earliest "tick N T" with T after
# START_US (the restored program's first tick). Lines may be overwritten in place by a restored
# program writing at its saved offset, hence grep -o rather than whole lines.
first_tick_after() {
    grep -ao 'tick [0-9]* [0-9]\{19\}' "$1" 2>/dev/null | awk -v s="${2}000" '
        $3 + 0 > s + 0 && (m == "" || $3 + 0 < m + 0) { m = $3 }
        END { if (m != "") printf "%.2f\n", (m - s) / 1e6 }'
}
wait_tick_after() { # OUTFILE START_US TIMEOUT_S PID -> prints ms, fails on timeout / death
    local deadline=$(( ${EPOCHREALTIME/./} + $3 * 1000000 )) r
    while :; do
        r=$(first_tick_after "$1" "$2")
        [ -n "$r" ] && { echo "$r"; return 0; }
        alive "$4" || return 1
        [ "${EPOCHREALTIME/./}" -gt "$deadline" ] && return 1
        sleep 0.02
    done
}

# stats IMAGE: "key value" lines from metadata.stats of forkpoint info --json
stats() {
    "$FP" info --json "$1" 2>/dev/null | tr -d ' \n\t' | grep -o '"stats":{[^{}]*}' |
        sed 's/^"stats":{//; s/}$//' | tr ',' '\n' | sed 's/"//g; s/:/ /'
}
pairs() { # ARRAY1 ARRAY2: "a1/b1 a2/b2 ..."
    local -n _a=$1 _b=$2
    local i o=""
    for i in "${!_a[@]}"; do o+="${o:+ }${_a[$i]}/${_b[$i]:-?}"; done
    echo "$o"
}
stat_of() { awk -v k="$2" '$1 == k { print $2 }' <<<"$1"; }

# ---------------------------------------------------------------- preparation
[ "$BUILD" = 1 ] && { (cd "$ROOT" && cargo build --release --workspace) || die "build failed"; }
[ -x "$FP" ] && [ -f "$LIB" ] || die "no $FP / $LIB: build first (cargo build --release --workspace)"
for t in gcc zstd dd awk timeout sync; do command -v "$t" >/dev/null || die "needs $t"; done
mkdir -p "$OUT" || die "cannot create $OUT"
W=$(mktemp -d "${WORKBASE:-${TMPDIR:-/tmp}}/forkpoint-bench.XXXXXX") || die "cannot create a work directory"
# Run a private copy of the binaries, so that a rebuild during the run cannot mix versions
# (restarts check that the library file behind the image's mappings is unchanged).
mkdir "$W/bin" && cp "$FP" "$LIB" "$W/bin/" || die "cannot copy the binaries"
FP=$W/bin/forkpoint
gcc -O2 -pthread -o "$W/workload" "$ROOT/examples/workload.c" || die "cannot compile examples/workload.c"
gcc -O2 -pthread -o "$W/faultin" "$ROOT/benches/faultin.c" || die "cannot compile benches/faultin.c"
[ -n "$LEVEL" ] && export FORKPOINT_ZSTD_LEVEL=$LEVEL

# CRIU: usable only if `criu check` passes (Debian 12's 3.17 fails on kernels >= 6.13: vvar split;
# benches/build-criu.sh builds a newer one into target/criu/criu). The binary: $CRIU, else
# target/criu/criu, else `criu` in PATH.
CRIU_OK=0
CRIU_WHY=""
CRIU=${CRIU:-}
CRIU_BUILD="benches/build-criu.sh builds CRIU >= 4.1 into target/criu/criu"
criu_probe() {
    if [ "$CRIU_WANTED" = 0 ]; then CRIU_WHY="skipped: --no-criu"; return; fi
    if [ -n "$CRIU" ]; then
        local c
        c=$(command -v "$CRIU") && [ -f "$c" ] && [ -x "$c" ] || { CRIU_WHY="skipped: CRIU=$CRIU is not an executable ($CRIU_BUILD)"; return; }
        CRIU=$c
    elif [ -x "$ROOT/target/criu/criu" ]; then
        CRIU=$ROOT/target/criu/criu
    else
        if ! command -v criu >/dev/null && [ "$CRIU_INSTALL" = 1 ] && [ "$(id -u)" = 0 ] &&
            command -v apt-get >/dev/null && [ ! -e "$OUT/.criu-install-tried" ]; then
            log "criu not installed: trying apt-get install -y criu (once; --no-criu-install to skip)"
            touch "$OUT/.criu-install-tried"
            timeout 300 apt-get install -y -q criu >"$W/apt.log" 2>&1 ||
                log "apt-get install criu failed: $(tail -1 "$W/apt.log")"
        fi
        if ! CRIU=$(command -v criu); then
            CRIU_WHY="skipped: criu is not installed ($CRIU_BUILD)"
            [ "$(id -u)" != 0 ] && CRIU_WHY="$CRIU_WHY (installing it needs root)"
            return
        fi
    fi
    local ver out rc
    ver=$(timeout 10 "$CRIU" --version 2>/dev/null | grep -io 'version: *[0-9.]*' | grep -o '[0-9.]*$')
    out=$(timeout 120 "$CRIU" check 2>&1); rc=$?
    if [ $rc -ne 0 ] || ! grep -q 'Looks good' <<<"$out"; then
        local err
        err=$(grep -i 'error' <<<"$out" | grep -v 'exited, status' | head -1 | sed 's/^ *//; s/|//g' | cut -c1-160)
        [ -z "$err" ] && err=$(tail -1 <<<"$out" | cut -c1-160)
        local why="CRIU < 4.1 does not know the 6.13 vvar split; $CRIU_BUILD; CRIU=/path selects one"
        [ "$(id -u)" != 0 ] && why="it needs root; $why"
        CRIU_WHY="skipped: criu ${ver:-?} ($CRIU) fails 'criu check' on kernel $(uname -r) ($why): $err"
        return
    fi
    CRIU_OK=1
}
criu_probe
[ "$CRIU_OK" = 1 ] && log "criu $(timeout 10 "$CRIU" --version 2>/dev/null | head -1) ($CRIU): check passed, CRIU columns on" || log "CRIU $CRIU_WHY"

# ---------------------------------------------------------------- output files
HDR="| size | pattern | app stall during checkpoint (us) | bare fork() (us) | stall / fork | durable image (ms) | zstd -1 -T$NPROC + fsync (ms) | durable / zstd | image | zstd output | image / zstd | restart to next tick (ms) | zstd -d on $NPROC CPUs (ms) | restart / zstd -d | app speed during write (page faults) | CRIU dump (ms) | CRIU image | CRIU restore (ms) |"
SEP="|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
DHDR="| size | pattern | lib pause (us) | bare fork runs (us) | stall during zstd (us) | stall runs (us@ms after request) | durable / zstd runs (ms) | CLI durable (ms) | write_ns (ms) | zstd no fsync (ms) | zstd -1 in $NPROC pieces (ms) | zstd -d 1 stream (ms) | loader hand-over (ms) | restart / zstd -d runs (ms) | fault-in of the stored pages on $NPROC CPUs (ms) | pages stored / zero / untouched | parent faults | loop speed before / during (loops/ms) |"
DSEP="|---|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|"
CSV_HDR="size_mib,pattern,runs,stall_us,lib_pause_us,fork_us,stall_fork_ratio,durable_ms,cli_durable_ms,write_ms,zstd_ms,zstd_nofsync_ms,durable_zstd_ratio,image_bytes,zstd_bytes,image_zstd_ratio,pages_stored,pages_zero,pages_untouched,bytes_raw,restart_ms,handover_ms,faultin_ms,decomp_par_ms,decomp_1_ms,zstd_pieces_ms,restart_decomp_ratio,loops_per_ms_before,loops_per_ms_during,app_speed_pct,parent_minflt,stall_during_zstd_us,criu_dump_ms,criu_image_bytes,criu_restore_ms,criu_note"
ROWS=()
DROWS=()
CSV=()
MISSES=()

echo "$HDR"
echo "$SEP"

# ---------------------------------------------------------------- one case
run_case() {
    local mib=$1 pat=$2 runs=$3
    local out=$W/out.txt dump=$W/dump.bin wpid r i
    rm -f "$W"/out.txt "$W"/*.fpk "$W"/*.zst "$dump"
    settle_fs
    log "$mib MiB $pat: starting the workload under forkpoint"
    "$FP" run --dir "$W" -- "$W/workload" "$mib" "$pat" "$dump" "$THREADS" "$APPWRITE" >"$out" 2>"$W/workload.err" </dev/null &
    wpid=$!
    CHILDREN+=("$wpid")
    if ! wait_count "$out" '^ready' 1 600 "$wpid"; then
        log "workload did not start: $(tail -2 "$W/workload.err")"; stop "$wpid" child; return 1
    fi
    # The dump is what zstd compresses: flush it to disk now (so its writeback does not disturb
    # the measurements) and make sure it is in the page cache.
    sync "$dump"; cat "$dump" >/dev/null

    sleep 0.2
    report "$wpid" "$out" || { log "workload does not report"; stop "$wpid" child; return 1; }

    # Each run: a bare fork() (the baseline of the pause), the loop's speed at rest just before
    # the checkpoint, the checkpoint, then its own baseline: zstd -1 -T<cpus> on the same bytes,
    # from the page cache, with the workload still running (it competes for the CPUs exactly
    # as during a checkpoint), then fsynced like the image. Interleaved so that forkpoint and
    # its baselines see the same background load.
    local forks=() n befores=()
    local stalls=() stallsat=() durs=() clidurs=() writes=() pauses=() speeds=() flts=() imgs=() st="" t0 t1 t2 rc
    local zs=() zns=() zstalls=() zbytes pcts=()
    for r in $(seq 1 "$runs"); do
        n=$(grep -ac '^fork_us' "$out")
        kill -USR2 "$wpid"
        if wait_count "$out" '^fork_us' $((n + 1)) 30 "$wpid"; then
            forks+=("$(grep -a '^fork_us' "$out" | sed -n "$((n + 1))p" | awk '{print $2}')")
        else
            log "no fork_us"
        fi
        sleep 0.5   # the fork's aftermath: the first write to each page faults once more
        report "$wpid" "$out"; sleep 0.3; report "$wpid" "$out"
        befores+=("$(awk -v l="$REP_LOOPS" -v u="$REP_US" 'BEGIN { printf "%.0f\n", l / (u / 1000) }')")
        t0=${EPOCHREALTIME/./}
        timeout 330 "$FP" checkpoint --timeout 300s --output "$W/img.$r.fpk" "$wpid" >"$W/ck.out" 2>"$W/ck.err"
        rc=$?
        t1=${EPOCHREALTIME/./}
        report "$wpid" "$out"
        if [ $rc -ne 0 ] || [ ! -f "$W/img.$r.fpk" ]; then
            log "checkpoint failed (rc $rc): $(tail -1 "$W/ck.err")"
        else
            imgs+=("$W/img.$r.fpk")
            stalls+=("$REP_STALL")
            stallsat+=("${REP_STALL}@$(( ${REP_AT:-0} / 1000 ))")
            durs+=("$(( (t1 - t0) / 1000 ))")
            clidurs+=("$(grep -o 'durable after [0-9.]* ms' "$W/ck.err" | grep -o '[0-9.]*')")
            speeds+=("$(awk -v l="$REP_LOOPS" -v u="$REP_US" 'BEGIN { printf "%.0f\n", l / (u / 1000) }')")
            pcts+=("$(awk -v a="${speeds[-1]}" -v b="${befores[-1]}" 'BEGIN { if (b > 0) printf "%.0f\n", 100 * a / b }')")
            flts+=("$REP_FLT")
            st=$(stats "$W/img.$r.fpk")
            pauses+=("$(awk -v n="$(stat_of "$st" pause_ns)" 'BEGIN { if (n != "") printf "%.0f\n", n / 1000 }')")
            writes+=("$(awk -v n="$(stat_of "$st" write_ns)" 'BEGIN { if (n != "") printf "%.0f\n", n / 1e6 }')")
            log "  checkpoint $r: stall ${REP_STALL} us, durable $(( (t1 - t0) / 1000 )) ms, $(stat -c %s "$W/img.$r.fpk") bytes"
        fi
        sleep 0.3

        # Each run writes its own file: removing the last one here would make this run (or
        # the next checkpoint) wait for the file system's discards of its blocks.
        report "$wpid" "$out"
        t0=${EPOCHREALTIME/./}
        timeout 600 zstd -q -1 -T"$NPROC" -f "$dump" -o "$W/dump.$r.zst"
        t1=${EPOCHREALTIME/./}
        sync "$W/dump.$r.zst"
        t2=${EPOCHREALTIME/./}
        report "$wpid" "$out"
        zs+=("$(( (t2 - t0) / 1000 ))"); zns+=("$(( (t1 - t0) / 1000 ))"); zstalls+=("$REP_STALL")
        log "  zstd $r: $(( (t2 - t0) / 1000 )) ms, $(stat -c %s "$W/dump.$r.zst" 2>/dev/null) bytes"
        sleep 0.3
    done
    local image_bytes=""; [ ${#imgs[@]} -gt 0 ] && image_bytes=$(stat -c %s "${imgs[-1]}")
    mv -f "$W/dump.$runs.zst" "$W/dump.zst" 2>/dev/null
    zbytes=$(stat -c %s "$W/dump.zst" 2>/dev/null)

    # Decompression baseline on all CPUs: the dump in NPROC pieces, each compressed alone
    # (zstd's CLI decompresses a single stream on one thread) at the image's own level (how
    # fast zstd decompresses depends on it), decompressed in parallel.
    local piece=$(( (mib + NPROC - 1) / NPROC )) pids=() lvl zlvl
    lvl=$(stat_of "$st" zstd_level)
    case "$lvl" in
        -*) zlvl="--fast=${lvl#-}" ;;
        ''|0) zlvl="-1" ;;   # store-only images: zstd has no store-only level
        *) zlvl="-$lvl" ;;
    esac
    t0=${EPOCHREALTIME/./}
    for i in $(seq 0 $((NPROC - 1))); do
        dd if="$dump" bs=1M skip=$((i * piece)) count=$piece status=none | zstd -q $zlvl -T1 -c >"$W/piece.$i.zst" &
        pids+=($!); CHILDREN+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; forget "$i"; done
    t1=${EPOCHREALTIME/./}
    local pieces_ms=$(( (t1 - t0) / 1000 ))

    # The original is not needed any more: stop it so that restarts and decompression run on
    # a quiet machine, and so that it does not write into the output file.
    stop "$wpid" child
    rm -f "$dump" "$W"/dump.[0-9]*.zst
    settle_fs

    # Single-stream decompression, once (details only).
    local d1
    t0=${EPOCHREALTIME/./}
    timeout 300 zstd -q -d -c "$W/dump.zst" >/dev/null
    t1=${EPOCHREALTIME/./}
    d1=$(( (t1 - t0) / 1000 ))
    rm -f "$W/dump.zst"

    # Each run: the decompression baseline, the fault-in floor (as much fresh memory as the
    # image stores, faulted in and filled on all CPUs: a restart pays it, the /dev/null
    # baseline does not), then a restart, timed from just before `forkpoint restart` runs until
    # the restored workload prints its first tick (its stdout, a regular file, is reopened at
    # the saved offset).
    local dps=() fis=() rss=() hos=() rpid res img fmib
    fmib=$(awk -v p="$(stat_of "$st" pages_stored)" 'BEGIN { if (p ~ /^[0-9]+$/) printf "%d\n", (p * 4096 + 1048575) / 1048576 }')
    r=0
    for img in "${imgs[@]}"; do
        r=$((r + 1))
        pids=()
        t0=${EPOCHREALTIME/./}
        for i in $(seq 0 $((NPROC - 1))); do
            timeout 300 zstd -q -d -c "$W/piece.$i.zst" >/dev/null &
            pids+=($!); CHILDREN+=($!)
        done
        for i in "${pids[@]}"; do wait "$i"; forget "$i"; done
        t1=${EPOCHREALTIME/./}
        dps+=("$(( (t1 - t0) / 1000 ))")
        [ -n "$fmib" ] && [ "$fmib" -gt 0 ] && fis+=("$(timeout 120 "$W/faultin" "$fmib" "$NPROC")")

        t0=${EPOCHREALTIME/./}
        "$FP" restart -v "$img" </dev/null >/dev/null 2>"$W/restart.err" &
        rpid=$!
        CHILDREN+=("$rpid")
        if res=$(wait_tick_after "$out" "$t0" 120 "$rpid"); then
            rss+=("$res")
            hos+=("$(grep -a 'handing over' "$W/restart.err" | grep -o '[0-9.]* ms' | head -1 | grep -o '[0-9.]*')")
            log "  restart $r: $res ms (zstd -d on $NPROC CPUs: ${dps[-1]} ms)"
        else
            log "restart failed: $(grep -av '^forkpoint restart:  *step' "$W/restart.err" | tail -2 | tr '\n' ' ')"
        fi
        stop "$rpid" child
        rm -f "$img"
    done
    rm -f "$W"/piece.*.zst
    settle_fs
    local fi_ms; fi_ms=$(median "${fis[@]}")

    # CRIU on the same workload (not preloaded), if it works here.
    local cdump="skipped" cbytes="" crest="skipped" cnote=""
    if [ "$CRIU_OK" = 1 ]; then
        cnote=ok
        local cd=$W/criu cout=$W/criu-out.txt cpid
        rm -rf "$cd"; mkdir -p "$cd"; rm -f "$cout"
        "$W/workload" "$mib" "$pat" - "$THREADS" "$APPWRITE" >"$cout" 2>/dev/null </dev/null &
        cpid=$!
        disown "$cpid"   # criu dump SIGKILLs it: no "Killed" job report (bash still reaps it)
        CHILDREN+=("$cpid")
        if wait_count "$cout" '^ready' 1 600 "$cpid"; then
            sleep 0.3
            t0=${EPOCHREALTIME/./}
            timeout 300 "$CRIU" dump -t "$cpid" -D "$cd" --shell-job >"$W/criu-dump.log" 2>&1
            rc=$?
            t1=${EPOCHREALTIME/./}
            if [ $rc -eq 0 ]; then
                # criu killed it; restore needs its PID free: until bash has reaped it
                for i in $(seq 1 250); do [ -e "/proc/$cpid" ] || break; sleep 0.02; done
                forget "$cpid"
                cdump=$(( (t1 - t0) / 1000 ))
                cbytes=$(du -sb "$cd" | cut -f1)
                t0=${EPOCHREALTIME/./}
                FOREIGN+=("$cpid")
                timeout 300 "$CRIU" restore -D "$cd" --shell-job -d >"$W/criu-restore.log" 2>&1
                rc=$?
                if [ $rc -eq 0 ] && res=$(wait_tick_after "$cout" "$t0" 120 "$cpid"); then
                    crest=$res
                else
                    crest=failed; cnote="restore failed: $(grep -ai error "$W/criu-restore.log" | tail -1 | cut -c1-120)"
                fi
                stop "$cpid"
            else
                cdump=failed; crest=-
                cnote="dump failed: $(grep -ai error "$W/criu-dump.log" | tail -1 | cut -c1-120)"
                stop "$cpid" child
            fi
        else
            cdump=failed; crest=-; cnote="workload did not start"; stop "$cpid" child
        fi
        rm -rf "$cd" "$cout"
        log "  CRIU: dump $cdump ms, $cbytes bytes, restore $crest ms"
    else
        cnote=$CRIU_WHY
    fi

    # Medians and the row.
    local fork_us speed_before; fork_us=$(median "${forks[@]}"); speed_before=$(median "${befores[@]}")
    local stall pause dur clidur write zms znms zstall rst ho dp speed flt
    stall=$(median "${stalls[@]}"); pause=$(median "${pauses[@]}"); dur=$(median "${durs[@]}")
    clidur=$(median "${clidurs[@]}"); write=$(median "${writes[@]}")
    zms=$(median "${zs[@]}"); znms=$(median "${zns[@]}"); zstall=$(median "${zstalls[@]}")
    rst=$(median "${rss[@]}"); ho=$(median "${hos[@]}"); dp=$(median "${dps[@]}")
    speed=$(median "${speeds[@]}"); flt=$(median "${flts[@]}")
    local r_stall r_dur r_img r_rst pct
    r_stall=$(ratio "$stall" "$fork_us"); r_dur=$(ratio "$dur" "$zms")
    r_img=$(ratio "$image_bytes" "$zbytes"); r_rst=$(ratio "$rst" "$dp")
    pct=$(median "${pcts[@]}")
    local fltk; fltk=$(awk -v f="$flt" 'BEGIN { if (f ~ /^[0-9]+$/) { if (f >= 1000) printf "%.1fk\n", f / 1000; else print f } else print "-" }')
    local row="| $mib MiB | $pat | $stall | $fork_us | ${r_stall}x | $dur | $zms | ${r_dur}x | $(human "$image_bytes") | $(human "$zbytes") | ${r_img}x | $rst | $dp | ${r_rst}x | ${pct}% (${fltk}) | $cdump | $(human "$cbytes") | $crest |"
    [ "$CRIU_OK" = 1 ] || row="| $mib MiB | $pat | $stall | $fork_us | ${r_stall}x | $dur | $zms | ${r_dur}x | $(human "$image_bytes") | $(human "$zbytes") | ${r_img}x | $rst | $dp | ${r_rst}x | ${pct}% (${fltk}) | skipped | skipped | skipped |"
    echo "$row"
    ROWS+=("$row")
    DROWS+=("| $mib MiB | $pat | $pause | $(IFS=' '; echo "${forks[*]}") | $zstall | $(IFS=' '; echo "${stallsat[*]}") | $(pairs durs zs) | $clidur | $write | $znms | $pieces_ms | $d1 | $ho | $(pairs rss dps) | $fi_ms | $(stat_of "$st" pages_stored) / $(stat_of "$st" pages_zero) / $(stat_of "$st" pages_untouched) | $flt | $speed_before / $speed |")
    CSV+=("$mib,$pat,$runs,$stall,$pause,$fork_us,$r_stall,$dur,$clidur,$write,$zms,$znms,$r_dur,$image_bytes,$zbytes,$r_img,$(stat_of "$st" pages_stored),$(stat_of "$st" pages_zero),$(stat_of "$st" pages_untouched),$(stat_of "$st" bytes_raw),$rst,$ho,$fi_ms,$dp,$d1,$pieces_ms,$r_rst,$speed_before,$speed,$pct,$flt,$zstall,$cdump,$cbytes,$crest,\"${cnote//\"/\'}\"")

    # Targets of issue 5 (reported, never asserted).
    over() { awk -v r="$1" -v t="$2" 'BEGIN { exit !(r ~ /^[0-9.]+$/ && r + 0 > t + 0) }'; }
    over "$r_stall" 1.2 && MISSES+=("$mib MiB $pat: pause ${r_stall}x the bare fork() (target <= 1.2x): stall $stall us (library-measured pause $pause us), fork $fork_us us; noise floor (stall during zstd) $zstall us")
    case $pat in text|random)
        over "$r_dur" 1.1 && MISSES+=("$mib MiB $pat: durable image ${r_dur}x zstd -1 -T$NPROC (target <= 1.1x): $dur ms vs $zms ms")
        over "$r_img" 1.02 && MISSES+=("$mib MiB $pat: image ${r_img}x zstd's size (target <= 1.02x): $image_bytes vs $zbytes bytes") ;;
    esac
    over "$r_rst" 1.2 && MISSES+=("$mib MiB $pat: restart ${r_rst}x decompression on $NPROC CPUs (target <= 1.2x): $rst ms vs $dp ms")
    [ "$CRIU_OK" = 1 ] && awk -v a="$rst" -v b="$crest" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a + 0 > b + 0) }' &&
        MISSES+=("$mib MiB $pat: restart $rst ms slower than CRIU's restore $crest ms")
    return 0
}

for mib in $SIZES; do
    case "$mib" in ''|*[!0-9]*) die "bad size $mib" ;; esac
    for pat in $PATTERNS; do
        runs=${RUNS:-$([ "$mib" -ge 4096 ] && echo 1 || echo 3)}
        run_case "$mib" "$pat" "$runs" || log "$mib MiB $pat: case failed, no row"
    done
done

# ---------------------------------------------------------------- results files
ELAPSED=$(( (${EPOCHREALTIME/./} - BENCH_T0) / 1000000 ))
REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && [ -n "$(git status --porcelain -- cdylib restart-loader image src 2>/dev/null)" ] && echo "+uncommitted")
{
    echo "# forkpoint benchmark"
    echo
    echo "\`benches/run.sh${ARGS:+ $ARGS}\` — $(date -u '+%Y-%m-%d %H:%M UTC'), forkpoint $REV, ${ELAPSED} s."
    echo "Kernel $(uname -r), $NPROC CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),"
    echo "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), THP $(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null),"
    echo "$(zstd --version | grep -o 'v[0-9.]*' | head -1 | sed 's/^/zstd /'), FORKPOINT_ZSTD_LEVEL=${FORKPOINT_ZSTD_LEVEL:-default}, $((THREADS + 1)) workload thread(s), workload rewrites $([ "$APPWRITE" = - ] && echo "its whole buffer every few ms" || echo "$APPWRITE MiB/s")."
    echo "Load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows up as stalls and slower baselines)."
    echo "Medians of the runs; details below."
    echo
    echo "$HDR"; echo "$SEP"
    printf '%s\n' "${ROWS[@]}"
    echo
    [ "$CRIU_OK" = 1 ] || echo "CRIU: $CRIU_WHY"
    echo
    echo "## Targets of issue 5 missed in this run"
    echo
    if [ ${#MISSES[@]} -eq 0 ]; then echo "None."; else printf -- '- %s\n' "${MISSES[@]}"; fi
    echo
    echo "## Details"
    echo
    echo "$DHDR"; echo "$DSEP"
    printf '%s\n' "${DROWS[@]}"
    echo
    cat <<'EOF'
## What the columns measure

- **app stall during checkpoint**: the workload's own largest gap between two iterations of its
  main loop (CLOCK_MONOTONIC) during `forkpoint checkpoint`; it includes everything the
  application felt (signal, quiesce, fork, copy-on-write faults, being descheduled while the
  writer runs). *lib pause* is the pause the library measured itself (`stats.pause_ns`);
  *stall during zstd* is the same measure while zstd runs next to the workload: the noise floor
  of a busy 2-CPU machine. In the details, each run's stall is followed by when it ended, in ms
  after the checkpoint was requested (a stall long after the pause happened during the write).
- **bare fork()**: the workload calls `fork()` itself (the child exits at once); the time of the
  call in the parent. Median of 3.
- **durable image**: wall time of `forkpoint checkpoint --output IMG PID` (request, pause,
  write, fsync, rename, report). **zstd -1 -T<cpus> + fsync**: `zstd -1 -T<cpus>` of the
  workload's buffer (dumped by the workload, in the page cache) to a file, then `sync FILE`; run
  while the workload keeps running, as during a checkpoint. *zstd no fsync* leaves the sync out.
- **image / zstd output**: bytes of the image file and of zstd's output.
- **restart to next tick**: from just before `forkpoint restart IMG` starts until the restored
  workload prints its next tick (the tick carries CLOCK_REALTIME; the workload ticks at once on
  a clock jump). **zstd -d on N CPUs**: the buffer split into N pieces, each compressed at the
  image's level (`--fast=N` for negative ones, `-1` for store-only images), the N pieces
  decompressed in parallel to /dev/null (zstd's CLI decompresses one
  stream on one thread; *zstd -d 1 stream* is that). *loader hand-over* is when `restart -v`
  jumps to the restore blob. *fault-in of the stored pages* is the time N threads take to
  fault in and fill as much fresh anonymous memory as the image stores (`benches/faultin.c`):
  a restart pays it too, on top of decompressing, while the /dev/null baseline does not.
- **app speed during write**: the workload's loop throughput between the checkpoint request and
  the durable image, relative to its throughput at rest; in brackets the minor page faults it
  took meanwhile (mostly copy-on-write: it rewrites its whole buffer within milliseconds, the
  worst case for a forked checkpoint).
- **CRIU**: `criu dump -t PID -D DIR --shell-job` (wall time: the process is frozen all along
  and killed at the end), `du -sb DIR`, `criu restore -D DIR --shell-job -d` until the next tick,
  on the same workload without the library.
EOF
} >"$OUT/results.md"
{ echo "$CSV_HDR"; printf '%s\n' "${CSV[@]}"; } >"$OUT/results.csv"

echo
[ "$CRIU_OK" = 1 ] || echo "CRIU: $CRIU_WHY"
if [ ${#MISSES[@]} -gt 0 ]; then echo "Targets missed:"; printf -- '- %s\n' "${MISSES[@]}"; fi
echo "Wrote $OUT/results.md and $OUT/results.csv (${ELAPSED} s)."
