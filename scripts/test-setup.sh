#!/usr/bin/env bash
# test-setup.sh -- checks scripts/setup.sh's detection on fake machines (CKPT_SETUP_ROOT): a
# fresh Debian that has libclang-cpp but not libclang must get libclang-dev, and so on. Installs
# nothing. Run by scripts/test.sh.
set -euo pipefail
setup="$(dirname "$0")/setup.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# touch_in ROOT PATH...: creates empty files (executables under usr/bin).
touch_in() {
    local r=$1 p
    shift
    for p in "$@"; do
        mkdir -p "$(dirname "$r/$p")"
        : >"$r/$p"
        case "$p" in usr/bin/*) chmod +x "$r/$p" ;; esac
    done
}

# expect NAME ROOT "PKG PKG...": setup.sh --check on ROOT must print exactly these packages.
expect() {
    local got
    got=$(CKPT_SETUP_ROOT=$2 "$setup" --check | tr '\n' ' ' | sed 's/ $//')
    if [ "$got" = "$3" ]; then
        echo "ok: $1"
    else
        echo "FAIL: $1: expected [$3], got [$got]" >&2
        fail=1
    fi
}

# A machine with everything (Debian bookworm's file names).
full=(
    usr/lib/llvm-14/lib/libclang.so.1 usr/lib/llvm-14/lib/libclang-cpp.so.14
    usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h
    usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h
    usr/bin/mpicc usr/bin/mpirun usr/bin/cc usr/bin/pkg-config usr/bin/make
)

mkdir -p "$tmp/empty"
expect "an empty machine needs everything" "$tmp/empty" \
    "build-essential libclang-dev libopenmpi-dev openmpi-bin pkg-config"

touch_in "$tmp/full" "${full[@]}"
expect "a complete machine needs nothing" "$tmp/full" ""

# The case of the issue: libclang-cpp (pulled in by other packages) is not libclang.
touch_in "$tmp/cpp-only" "${full[@]:1}"
expect "libclang-cpp.so.14 alone is not libclang" "$tmp/cpp-only" "libclang-dev"
touch_in "$tmp/cpp-multiarch" usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 "${full[@]:2}"
expect "libclang-cpp in the multiarch dir is not libclang either" "$tmp/cpp-multiarch" \
    "libclang-dev"

# libclang without clang's headers (libclang1-N alone) cannot parse mpi.h.
touch_in "$tmp/no-headers" usr/lib/x86_64-linux-gnu/libclang-14.so.1 "${full[@]:3}"
expect "libclang without its headers" "$tmp/no-headers" "libclang-dev"

# mpirun without the headers (openmpi-bin alone), and no compiler nor pkg-config.
touch_in "$tmp/runtime" usr/lib/llvm-14/lib/libclang.so \
    usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h usr/bin/mpirun
expect "the MPI runtime without headers or tools" "$tmp/runtime" \
    "build-essential libopenmpi-dev pkg-config"

# pkgconf and gcc serve as well as pkg-config and cc.
touch_in "$tmp/alt" "${full[@]:0:6}" usr/bin/gcc usr/bin/pkgconf usr/bin/make
expect "gcc and pkgconf do" "$tmp/alt" ""

# A compiler without make cannot build the bundled libffi.
touch_in "$tmp/no-make" "${full[@]:0:8}"
expect "a compiler without make" "$tmp/no-make" "build-essential"

# And this machine as it is: nothing to install (the build works here).
if [ -z "$(CKPT_SETUP_ROOT='' "$setup" --check)" ]; then
    echo "ok: this machine needs nothing"
else
    echo "FAIL: this machine: setup.sh --check lists $("$setup" --check | tr '\n' ' ')" >&2
    fail=1
fi
exit $fail
