#!/usr/bin/env bash
# demo.sh -- the main demo on one machine: heat2d on 4 ranks is checkpointed, one rank is
# killed with SIGKILL mid-run, the launcher restarts the job from the newest committed epoch,
# and the final checksum is compared with an uninterrupted run.
#
# Knobs: NX, NY (grid, default 1024x1024 = 8 MiB of state), STEPS (default 600),
#        EVERY (checkpoint interval, default 100 polls), KILL_RANK (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
NX=${NX:-1024} NY=${NY:-1024} STEPS=${STEPS:-600} EVERY=${EVERY:-100} KILL_RANK=${KILL_RANK:-2}

scripts/setup.sh
cargo build --release --workspace --bins
CKPT=$PWD/target/release/ckpt
HEAT=$PWD/target/release/heat2d
ARGS=(--nx "$NX" --ny "$NY" --steps "$STEPS")
ROOT=$PWD/ckpt-jobs/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$ROOT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. Uninterrupted run, no checkpoints (the reference)"
"$CKPT" run -n 4 --every off --job-dir "$ROOT/reference" -- "$HEAT" "${ARGS[@]}" | tee "$ROOT/reference.out"

say "2. Checkpointed run (every $EVERY steps); rank $KILL_RANK is killed with SIGKILL after the second epoch"
JOB=$ROOT/job
"$CKPT" run -n 4 --every "$EVERY" --max-restarts 3 --job-dir "$JOB" -- "$HEAT" "${ARGS[@]}" --step-ms 2 \
    > "$ROOT/job.out" &
launcher=$!
# Wait for epoch 2, find the rank's pid through its environment, kill it.
for _ in $(seq 600); do
    [ -f "$JOB/manifests/epoch-00000002.manifest" ] && break
    sleep 0.1
done
pid=""
for env in /proc/[0-9]*/environ; do
    if tr '\0' '\n' 2>/dev/null < "$env" | grep -qx "CKPT_JOB_DIR=$JOB" &&
       tr '\0' '\n' 2>/dev/null < "$env" | grep -qx "OMPI_COMM_WORLD_RANK=$KILL_RANK"; then
        pid=${env#/proc/}; pid=${pid%/environ}; break
    fi
done
if [ -n "$pid" ]; then
    echo "demo: kill -9 $pid (rank $KILL_RANK)"
    kill -9 "$pid"
else
    echo "demo: rank $KILL_RANK already finished; nothing to kill (try a larger STEPS)"
fi
wait "$launcher"
cat "$ROOT/job.out"

say "3. Committed epochs (ckpt list)"
"$CKPT" list "$JOB"

say "4. Result"
ref=$(sed -n 's/^checksum: //p' "$ROOT/reference.out" | tail -n1)
got=$(sed -n 's/^checksum: //p' "$ROOT/job.out" | tail -n1)
echo "uninterrupted:     $ref"
echo "killed+restarted:  $got"
if [ -n "$ref" ] && [ "$ref" = "$got" ]; then
    echo "bit-identical: yes"
else
    echo "bit-identical: NO" >&2
    exit 1
fi
echo "job directories under $ROOT"
