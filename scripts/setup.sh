#!/usr/bin/env bash
# setup.sh -- install what building and testing ckpt needs on a Debian machine, if missing.
#
# Idempotent and quiet when everything is there. Needs root (or sudo) only when it installs.
#   OpenMPI (mpirun, mpicc, headers)  openmpi-bin libopenmpi-dev
#   libclang for rsmpi's bindgen      libclang-dev
#   a C compiler, pkg-config          build-essential pkg-config
# The Rust toolchain itself (cargo) must already be installed (rustup).
set -euo pipefail

need=()
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || need+=(libopenmpi-dev)
dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
# libclang-cpp.so (installed without libclang-dev on many machines) is not what bindgen loads:
# ask dpkg for the package itself.
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)

if [ ${#need[@]} -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the Rust toolchain with rustup first" >&2
    exit 1
fi
echo "setup: ok ($(mpirun --version 2>/dev/null | head -n1); $(cargo --version))"
