#!/usr/bin/env bash
# demo.sh -- the main demo on one machine: heat2d on 8 ranks over 4 emulated nodes is
# checkpointed (L1 on each node, L2 partner copies in the background); mid-run one rank is
# killed with SIGKILL (the launcher restarts the job), one rank is migrated to another node
# (`ckpt migrate`), and a whole node is lost (`ckpt kill-node`: its ranks and its node-local
# storage; the restart recovers them from their partners' copies). The final checksum is
# compared with an uninterrupted run.
#
# Knobs: NX, NY (grid, default 1024x1024 = 8 MiB of state), STEPS (default 600),
#        EVERY (checkpoint interval, default 50 polls), KILL_RANK (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
NX=${NX:-1024} NY=${NY:-1024} STEPS=${STEPS:-600} EVERY=${EVERY:-50} KILL_RANK=${KILL_RANK:-2}

scripts/setup.sh
cargo build --release --workspace --bins
CKPT=$PWD/target/release/ckpt
HEAT=$PWD/target/release/heat2d
ARGS=(--nx "$NX" --ny "$NY" --steps "$STEPS")
ROOT=$PWD/ckpt-jobs/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$ROOT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Waits (up to a minute) until the job's event log holds N events of kind $2.
wait_events() {
    for _ in $(seq 600); do
        [ "$(grep -c "\"event\":\"$2\"" "$JOB/events.jsonl" 2>/dev/null || true)" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "demo: no $1 $2 events after a minute" >&2
    return 1
}

say "1. Uninterrupted run, no checkpoints (the reference)"
"$CKPT" run -n 8 --every off --job-dir "$ROOT/reference" -- "$HEAT" "${ARGS[@]}" | tee "$ROOT/reference.out"

say "2. Checkpointed run on 4 emulated nodes (every $EVERY steps): a rank killed, a rank migrated, a node lost"
JOB=$ROOT/job
"$CKPT" run -n 8 --emulate-nodes 4 --every "$EVERY" --max-restarts 3 --job-dir "$JOB" -- \
    "$HEAT" "${ARGS[@]}" --step-ms 10 > "$ROOT/job.out" 2>&1 &
launcher=$!
# a) After epoch 2: find rank KILL_RANK's pid through its environment, SIGKILL it.
wait_events 2 committed
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
# b) Once restarted and two more epochs in: move rank 1 from node0 to node3.
wait_events 1 restored
n=$(grep -c '"event":"committed"' "$JOB/events.jsonl")
wait_events $((n + 2)) committed
echo "demo: ckpt migrate $JOB --rank 1 --to node3"
"$CKPT" migrate "$JOB" --rank 1 --to node3
# c) Two more epochs, then node2 (ranks 4 and 5, and its node-local files) is lost.
n=$(grep -c '"event":"committed"' "$JOB/events.jsonl")
wait_events $((n + 2)) committed
echo "demo: ckpt kill-node $JOB node2"
"$CKPT" kill-node "$JOB" node2
wait "$launcher"
cat "$ROOT/job.out"

say "3. Committed epochs, their levels and placement (ckpt list --ranks)"
"$CKPT" list --ranks "$JOB"

say "4. Result"
ref=$(sed -n 's/^checksum: //p' "$ROOT/reference.out" | tail -n1)
got=$(sed -n 's/^checksum: //p' "$ROOT/job.out" | tail -n1)
echo "uninterrupted:               $ref"
echo "killed, migrated, node lost: $got"
if [ -n "$ref" ] && [ "$ref" = "$got" ]; then
    echo "bit-identical: yes"
else
    echo "bit-identical: NO" >&2
    exit 1
fi
echo "job directories under $ROOT"
