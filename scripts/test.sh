#!/usr/bin/env bash
# test.sh -- the whole test suite: set-up, formatting, lints, unit, property and end-to-end tests
# (real mpirun, real files). `.ci/run` runs exactly this with CKPT_REQUIRE_MPI=1, which turns a
# missing mpirun into a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
scripts/setup.sh
scripts/test-setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the launcher and the examples as separate processes.
cargo build --workspace --bins
log=$(mktemp)
# The Slurm paths run against a real local cluster (munge, slurmctld, a slurmd per emulated
# node; scripts/slurm-up.sh installs Debian's packages when missing), stopped at the end.
# Only if it cannot come up are those tests skipped, and then this says so loudly.
export LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/ckpt-lab/slurm}
slurm_note=""
if scripts/slurm-up.sh > "$log.slurm" 2>&1; then
    export SLURM_CONF=$LAB_DIR/etc/slurm.conf CKPT_REQUIRE_SLURM=1
    trap 'scripts/slurm-down.sh >/dev/null 2>&1 || true; rm -f "$log" "$log.slurm"' EXIT
else
    slurm_note="WARNING: the local Slurm cluster did not come up (see below): the Slurm tests were SKIPPED"
    echo "$slurm_note" >&2; tail -n 20 "$log.slurm" >&2
    trap 'rm -f "$log" "$log.slurm"' EXIT
fi
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last being the
# doc-tests, some of them examples marked `ignore`).
sum() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
echo "test.sh: done in $(( $(date +%s) - t0 )) s"
echo "tests: $(sum passed) passed, $(sum failed) failed, $(sum ignored) skipped"
if [ -n "$slurm_note" ]; then echo "$slurm_note" >&2; fi
