#!/usr/bin/env bash
# bench-cg.sh -- the NPB CG benchmark of issue 11: class A (or CLASS) on RANKS ranks, run time
# of the iterations (as npb-cg prints it: rank 0, first outer iteration to last, matrix
# generation excluded) in three configurations, interleaved, REPS times each:
#   plain   rsmpi alone (npb-cg --plain under mpirun)
#   off     under `ckpt run --every off` (ck.comm(), no checkpoint)
#   every10 under `ckpt run --every 10` (one checkpoint in class A's 15 iterations)
# Prints each run and, per configuration, the median, min and max, and the overhead of each
# ckpt configuration over plain rsmpi (medians). Every run must print `verified: yes`.
#
# Knobs: CLASS (A), RANKS (4), REPS (7). Quiet machines only: on 2 cores, 4 busy-polling ranks
# make single runs vary a lot; the load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
CLASS=${CLASS:-A} RANKS=${RANKS:-4} REPS=${REPS:-7}
cargo build --release --workspace --bins >/dev/null 2>&1 || cargo build --release --workspace --bins
B=$PWD/target/release
mkdir -p ckpt-jobs
ROOT=$(mktemp -d "$PWD/ckpt-jobs/bench-cg-XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
MPIRUN=(mpirun --oversubscribe -n "$RANKS")
[ "$(id -u)" = 0 ] && MPIRUN=(mpirun --allow-run-as-root --oversubscribe -n "$RANKS")

secs_of() { # the iterations' time from npb-cg's output; fails unless verified
    grep -q '^verified: yes' "$1" || { echo "bench-cg: not verified:" >&2; cat "$1" >&2; exit 1; }
    sed -n 's/.*iterations in \([0-9.]*\) s.*/\1/p' "$1" | head -1
}
run_one() { # config rep
    local out=$ROOT/$1-$2.out
    case $1 in
        plain) "${MPIRUN[@]}" "$B/npb-cg" --class "$CLASS" --plain > "$out" 2>&1 ;;
        off) "$B/ckpt" run -n "$RANKS" --job-dir "$ROOT/job-$1-$2" --every off -- \
                 "$B/npb-cg" --class "$CLASS" > "$out" 2>&1 ;;
        every10) "$B/ckpt" run -n "$RANKS" --job-dir "$ROOT/job-$1-$2" --every 10 -- \
                 "$B/npb-cg" --class "$CLASS" > "$out" 2>&1 ;;
    esac
    secs_of "$out"
}
echo "bench-cg: class $CLASS on $RANKS ranks, $REPS runs of each configuration, interleaved; load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A times
for rep in $(seq "$REPS"); do
    for c in plain off every10; do
        t=$(run_one "$c" "$rep")
        times[$c]="${times[$c]:-} $t"
        echo "  run $rep $c: $t s"
    done
done
stats() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.3f %.3f %.3f", m, v[1], v[NR]}'; }
read -r pm pmin pmax <<<"$(echo "${times[plain]}" | stats)"
echo "iterations (s)                  median   min     max     vs plain (medians)"
for c in plain off every10; do
    read -r m mn mx <<<"$(echo "${times[$c]}" | stats)"
    printf '  %-28s %6.3f  %6.3f  %6.3f   %+.1f%%\n' "$c" "$m" "$mn" "$mx" \
        "$(awk -v a="$m" -v b="$pm" 'BEGIN{print (a/b-1)*100}')"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
