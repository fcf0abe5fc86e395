#!/usr/bin/env bash
# setup.sh -- install what building and testing ckpt needs on a Debian/Ubuntu machine, if missing.
#
# Idempotent and quiet when everything is there. Needs root (or sudo) only when it installs.
# Each need is detected by the file or command the build uses, not by a package name:
#   libclang itself (the library bindgen loads: libclang.so or libclang-N.so*, not
#     libclang-cpp, which many machines have without it) and clang's own
#     headers (stddef.h)                                     -> libclang-dev
#   OpenMPI's mpi.h (mpicc -showme:incdirs)                  -> libopenmpi-dev
#   mpirun                                                   -> openmpi-bin
#   a C compiler (cc, gcc or clang) and make (rsmpi's user
#     operations build the bundled libffi)                   -> build-essential
#   pkg-config (or pkgconf)                                  -> pkg-config
# The Rust toolchain itself (cargo) must already be installed (rustup).
#
#   scripts/setup.sh           install what is missing
#   scripts/setup.sh --check   print the packages that would be installed, one a line; install
#                              nothing
# CKPT_SETUP_ROOT=DIR makes the detection look at DIR as if it were / (files under DIR, commands
# in DIR/usr/bin, no ldconfig cache): scripts/test-setup.sh checks the detection that way.
set -euo pipefail

root=${CKPT_SETUP_ROOT:-}

# Whether command $1 exists (in $root/usr/bin when a root is given).
have_cmd() {
    if [ -n "$root" ]; then
        [ -x "$root/usr/bin/$1" ]
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

# Whether a file name is the libclang bindgen loads (libclang-cpp is another library).
is_libclang() {
    case "${1##*/}" in
        libclang-cpp*) return 1 ;;
        libclang.so | libclang.so.* | libclang-*.so | libclang-*.so.*) return 0 ;;
        *) return 1 ;;
    esac
}

# Whether libclang is installed: in the linker cache, or under an LLVM or multiarch lib dir.
have_libclang() {
    local f
    if [ -z "$root" ] && command -v ldconfig >/dev/null 2>&1; then
        while read -r f; do
            is_libclang "$f" && return 0
        done < <(ldconfig -p 2>/dev/null | awk '/libclang/ {print $NF}')
    fi
    for f in "$root"/usr/lib/llvm-*/lib/libclang* "$root"/usr/lib/*-linux-gnu/libclang* \
        "$root"/usr/lib/libclang* "$root"/usr/lib64/libclang*; do
        [ -e "$f" ] && is_libclang "$f" && return 0
    done
    return 1
}

# Whether clang's builtin headers are there (bindgen's libclang needs stddef.h from them).
have_clang_headers() {
    local f
    for f in "$root"/usr/lib/llvm-*/lib/clang/*/include/stddef.h \
        "$root"/usr/lib/clang/*/include/stddef.h; do
        [ -e "$f" ] && return 0
    done
    return 1
}

# Whether OpenMPI's mpi.h is installed: where mpicc says, else in Debian's usual places.
have_mpi_header() {
    local d
    if [ -z "$root" ] && have_cmd mpicc; then
        for d in $(mpicc -showme:incdirs 2>/dev/null); do
            [ -e "$d/mpi.h" ] && return 0
        done
    fi
    for d in "$root"/usr/lib/*-linux-gnu/openmpi/include "$root"/usr/include/openmpi \
        "$root"/usr/include; do
        [ -e "$d/mpi.h" ] && return 0
    done
    return 1
}

# The packages the build needs and this machine lacks, one a line, sorted.
missing_packages() {
    {
        { have_libclang && have_clang_headers; } || echo libclang-dev
        { have_mpi_header && have_cmd mpicc; } || echo libopenmpi-dev
        have_cmd mpirun || echo openmpi-bin
        { have_cmd cc || have_cmd gcc || have_cmd clang; } && have_cmd make || echo build-essential
        have_cmd pkg-config || have_cmd pkgconf || echo pkg-config
    } | sort -u
}

main() {
    local need
    mapfile -t need < <(missing_packages)
    if [ "${1:-}" = "--check" ]; then
        [ ${#need[@]} -eq 0 ] || printf '%s\n' "${need[@]}"
        return 0
    fi
    if [ ${#need[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "setup: installing ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >/dev/null
        mapfile -t need < <(missing_packages)
        if [ ${#need[@]} -gt 0 ]; then
            echo "setup: still missing after the install: ${need[*]}" >&2
            return 1
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found; install the Rust toolchain with rustup first" >&2
        return 1
    fi
    echo "setup: ok ($(mpirun --version 2>/dev/null | head -n1); $(cargo --version))"
}

main "$@"
