#!/usr/bin/env bash
# Builds CRIU for the benchmark's CRIU columns (benches/run.sh) into target/criu/criu, without
# installing anything of CRIU system-wide. Debian 12's packaged CRIU 3.17 fails `criu check` on
# kernels >= 6.13 ("vdso: Unexpected rt vDSO area bounds": the vvar split); CRIU >= 4.1 knows
# the new layout. Written for Debian/Ubuntu (apt-get); elsewhere install the packages yourself.
#
#   benches/build-criu.sh [options]
#
#   --version TAG   the CRIU tag to clone (default v4.2; at least v4.1)
#   --url URL       the repository to clone (default https://github.com/checkpoint-restore/criu)
#   --src DIR       build from an existing CRIU source tree (a checkout or an unpacked release)
#                   instead of cloning; it is copied to target/criu-src, DIR is left untouched
#   --jobs N        make -jN (default: the number of CPUs)
#   --no-deps       do not check or install the build dependencies
#
# Steps: the build dependencies with apt-get (only the missing ones; needs root), the source
# (`git clone --depth 1 --branch TAG URL target/criu-src`,
# reused when already there, or the copy of --src), `make criu` (only the binary: no docs, no
# python, no plugins), the binary copied to target/criu/criu, its version, and `criu check`
# when run as root. benches/run.sh then picks target/criu/criu up by itself ($CRIU overrides).
# Every step has a time limit; the script exits non-zero with the reason when one fails.
set -uo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=v4.2
SRC=""
JOBS=$(nproc 2>/dev/null || echo 2)
DEPS=1
URL=https://github.com/checkpoint-restore/criu
while [ $# -gt 0 ]; do
    case "$1" in
        --version) VERSION=${2:?--version needs a tag}; shift ;;
        --url) URL=${2:?--url needs a URL}; shift ;;
        --src) SRC=${2:?--src needs a directory}; shift ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
        --no-deps) DEPS=0 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-criu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

T0=${EPOCHREALTIME/./}
log() { printf '[%6.1fs] %s\n' "$(( ${EPOCHREALTIME/./} - T0 ))e-6" "$*" >&2; }
die() { echo "build-criu.sh: $*" >&2; exit 1; }

TARGET=$ROOT/target
BUILD=$TARGET/criu-src           # the tree that is built (owned by this script)
DEST=$TARGET/criu                # the result: $DEST/criu
LOGDIR=$TARGET/criu-logs
mkdir -p "$DEST" "$LOGDIR" || die "cannot create $DEST / $LOGDIR"

# ---------------------------------------------------------------- build dependencies
# What `make criu` needs (criu/Makefile.packages: protobuf-c, libnl-3, libnet, libcap, uuid;
# libbsd for setproctitle). GnuTLS (page-server TLS) is disabled below so that the result does
# not depend on whether libgnutls28-dev happens to be installed; nftables locking (network
# namespaces only) is left out.
PKGS="build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libnl-3-dev libcap-dev libnet1-dev uuid-dev libbsd-dev"
[ -z "$SRC" ] && PKGS="$PKGS git ca-certificates"
if [ "$DEPS" = 1 ]; then
    command -v dpkg-query >/dev/null || die "no dpkg-query: not Debian/Ubuntu; install the equivalents of: $PKGS (then --no-deps)"
    MISSING=""
    for p in $PKGS; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || MISSING="$MISSING $p"
    done
    if [ -z "$MISSING" ]; then
        log "build dependencies: all present"
    else
        [ "$(id -u)" = 0 ] || die "missing build dependencies:$MISSING (run as root, or: sudo apt-get install$MISSING)"
        command -v apt-get >/dev/null || die "no apt-get to install:$MISSING"
        log "installing:$MISSING"
        export DEBIAN_FRONTEND=noninteractive
        # shellcheck disable=SC2086
        if ! timeout 600 apt-get install -y -q --no-install-recommends $MISSING >"$LOGDIR/apt.log" 2>&1; then
            log "apt-get install failed ($(tail -1 "$LOGDIR/apt.log")): apt-get update, then once more"
            timeout 300 apt-get update -q >>"$LOGDIR/apt.log" 2>&1 || die "apt-get update failed: $(tail -1 "$LOGDIR/apt.log") (log: $LOGDIR/apt.log)"
            # shellcheck disable=SC2086
            timeout 600 apt-get install -y -q --no-install-recommends $MISSING >>"$LOGDIR/apt.log" 2>&1 ||
                die "apt-get install failed: $(tail -1 "$LOGDIR/apt.log") (log: $LOGDIR/apt.log)"
        fi
    fi
fi
for t in make gcc pkg-config protoc protoc-c; do
    command -v "$t" >/dev/null || die "needs $t (build dependencies missing; drop --no-deps or install: $PKGS)"
done

# ---------------------------------------------------------------- source
STAMP=$BUILD/.forkpoint-criu-src
if [ -n "$SRC" ]; then
    [ -f "$SRC/Makefile" ] && [ -f "$SRC/Makefile.versions" ] && [ -d "$SRC/criu" ] ||
        die "--src $SRC: not a CRIU source tree (no Makefile, Makefile.versions, criu/)"
    SRC=$(cd "$SRC" && pwd)
    log "copying $SRC to $BUILD"
    rm -rf "$BUILD" && mkdir -p "$BUILD" || die "cannot recreate $BUILD"
    timeout 300 tar -C "$SRC" --exclude=./.git -cf - . | timeout 300 tar -C "$BUILD" -xf - ||
        die "cannot copy $SRC to $BUILD"
    echo "src $SRC" >"$STAMP"
elif [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "clone $URL $VERSION" ]; then
    log "reusing the $VERSION clone in $BUILD"
else
    log "cloning CRIU $VERSION from $URL"
    rm -rf "$BUILD.tmp"
    if ! timeout 300 git clone -q --depth 1 --branch "$VERSION" "$URL" "$BUILD.tmp" >"$LOGDIR/clone.log" 2>&1; then
        rm -rf "$BUILD.tmp"
        die "git clone --branch $VERSION $URL failed: $(tail -1 "$LOGDIR/clone.log"). Without network access to github, pass a source tree: --src DIR (e.g. an unpacked https://github.com/checkpoint-restore/criu/archive/refs/tags/$VERSION.tar.gz)"
    fi
    rm -rf "$BUILD" && mv "$BUILD.tmp" "$BUILD" || die "cannot move the clone to $BUILD"
    echo "clone $URL $VERSION" >"$STAMP"
fi
SRCVER=$(awk -F':= *' '/^CRIU_VERSION_(MAJOR|MINOR|SUBLEVEL)[ \t]/ && $2 != "" { v = v (v == "" ? "" : ".") $2 } END { print v }' "$BUILD/Makefile.versions")
log "CRIU source version ${SRCVER:-?}"
case "$SRCVER" in
    [0-3].*|4.0|4.0.*) log "warning: CRIU $SRCVER < 4.1 fails 'criu check' on kernels >= 6.13 (vvar split)" ;;
esac

# ---------------------------------------------------------------- build
log "make -j$JOBS criu (log: $LOGDIR/make.log)"
B0=${EPOCHREALTIME/./}
if ! timeout 1800 make -C "$BUILD" -j"$JOBS" NO_GNUTLS=1 criu >"$LOGDIR/make.log" 2>&1; then
    grep -a -iE 'error|fatal|not found|No such file' "$LOGDIR/make.log" | head -5 >&2
    die "make criu failed or timed out (30 min); last lines of $LOGDIR/make.log: $(tail -3 "$LOGDIR/make.log" | tr '\n' ' ')"
fi
log "built in $(( (${EPOCHREALTIME/./} - B0) / 1000000 )) s"
[ -x "$BUILD/criu/criu" ] || die "make succeeded but $BUILD/criu/criu is missing"

# ---------------------------------------------------------------- install and verify
cp "$BUILD/criu/criu" "$DEST/criu.new" && mv -f "$DEST/criu.new" "$DEST/criu" || die "cannot install $DEST/criu"
VER=$(timeout 10 "$DEST/criu" --version 2>&1) || die "$DEST/criu --version fails: $VER"
log "installed $DEST/criu: $(echo "$VER" | tr '\n' ' ')"
if [ "$(id -u)" = 0 ]; then
    OUT=$(timeout 120 "$DEST/criu" check 2>&1); RC=$?
    if [ $RC -eq 0 ] && grep -q 'Looks good' <<<"$OUT"; then
        log "criu check: passed on kernel $(uname -r)"
    else
        log "criu check FAILED on kernel $(uname -r) (benches/run.sh will skip the CRIU columns): $(grep -i error <<<"$OUT" | head -1)"
    fi
else
    log "criu check not run: it needs root (as do the CRIU columns of benches/run.sh)"
fi
echo "$DEST/criu"
