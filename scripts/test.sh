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
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last being the
# doc-tests, some of them examples marked `ignore`).
sum() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
echo "test.sh: done in $(( $(date +%s) - t0 )) s"
echo "tests: $(sum passed) passed, $(sum failed) failed, $(sum ignored) skipped"
