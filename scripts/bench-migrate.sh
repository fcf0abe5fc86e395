#!/usr/bin/env bash
# bench-migrate.sh -- the migration benchmark of issue 9: one rank holding 256 MiB moves to
# another node mid-run (`ckpt migrate`), and its phases and total freeze are printed next to
# the raw operations on the same storage, measured in the same run: a write+fsync of the
# rank's bytes (its checkpoint), a copy of them from the old node's directory to the new
# one's with fsync (the transfer), and a cold read (its restore).
#
# heat2d on 4 ranks over 2 emulated nodes, 8192x16384 doubles: 256 MiB per rank; rank 3 moves
# between node1 and node0 (rank 2 stays on node1 and sends it its file). Background levels are
# off (CKPT_L2_EVERY=0 ...) so the figures are the migration's own; with L2 on, the stop also
# completes the last epoch's partner copies.
#
# Knobs: NX (default 8192), REPS (3: migrations measured, back and forth).
# Needs root for the cold reads (/proc/sys/vm/drop_caches); says so otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
NX=${NX:-8192} RANKS=4 REPS=${REPS:-3}
cargo build --release --workspace --bins >/dev/null 2>&1 || cargo build --release --workspace --bins
CKPT=$PWD/target/release/ckpt
HEAT=$PWD/target/release/heat2d
mkdir -p ckpt-jobs
ROOT=$(mktemp -d "$PWD/ckpt-jobs/bench-migrate-XXXXXX")
JOB=$ROOT/job
trap 'rm -rf "$ROOT"' EXIT
export CKPT_L2_EVERY=0 CKPT_L3_EVERY=0 CKPT_L4_EVERY=0

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not root)" >&2; }
commits() { local n; n=$(grep -c '"event":"committed"' "$JOB/events.jsonl" 2>/dev/null || true); echo "${n:-0}"; }

# A checkpoint every 15 polls (about 3 s here): each migration is asked for right after an
# epoch, so its checkpoint is its own. With one every few polls, an interval checkpoint often
# came while the request was being agreed on, and the ranks stopped a step after it.
"$CKPT" run -n "$RANKS" --emulate-nodes 2 --every 15 --job-dir "$JOB" -- \
    "$HEAT" --nx "$NX" --ny $((NX * 2)) --steps 100000 > "$ROOT/job.out" 2>&1 &
launcher=$!
wait_commits() {
    for _ in $(seq 1200); do [ "$(commits)" -ge "$1" ] && return 0; sleep 0.1; done
    echo "bench-migrate: no commit $1 in 2 minutes" >&2; kill "$launcher"; exit 1
}
wait_commits 1
freezes=()
for i in $(seq "$REPS"); do
    n=$(commits)
    wait_commits $((n + 1))
    to=$([ $((i % 2)) -eq 1 ] && echo node0 || echo node1)
    out=$("$CKPT" migrate "$JOB" --rank 3 --to "$to")
    echo "$out"
    freezes+=("$(echo "$out" | sed -n 's/^total freeze *\([0-9.]*\) s.*/\1/p')")
done
"$CKPT" checkpoint --then-exit "$JOB" >/dev/null
wait "$launcher" || true

# A handoff that failed falls back to a transfer at the restore; say why.
grep -h "handing the file off\|handoff refused\|cannot offer a handoff\|handoff of this rank" \
    "$ROOT/job.out" >&2 || true

# The raw operations on the same storage: the size of one rank's file of the last epoch.
bytes=$(find "$JOB/local" -name 'rank-000003.ckpt' -path '*epoch-*' -printf '%s\n' | head -n1)
python3 - "$ROOT" "$bytes" "${freezes[@]}" <<'EOF'
import os, sys, time, statistics
root, size = sys.argv[1], int(sys.argv[2])
freezes = [float(f) for f in sys.argv[3:] if f]
a, b = os.path.join(root, "job/local/node1/raw"), os.path.join(root, "job/local/node0/raw")
def drop():
    try:
        os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
    except OSError:
        pass
chunk = os.urandom(4 << 20)
def write(path):
    t = time.monotonic()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(chunk)); f.write(chunk[:n]); left -= n
        f.flush(); os.fsync(f.fileno())
    return time.monotonic() - t
def copy(src, dst):
    t = time.monotonic()
    with open(src, "rb") as i, open(dst, "wb") as o:
        while True:
            buf = i.read(4 << 20)
            if not buf: break
            o.write(buf)
        o.flush(); os.fsync(o.fileno())
    return time.monotonic() - t
def read(path):
    t = time.monotonic()
    with open(path, "rb") as f:
        while f.read(4 << 20): pass
    return time.monotonic() - t
rows = []
for _ in range(3):
    os.makedirs(os.path.dirname(a), exist_ok=True); os.makedirs(os.path.dirname(b), exist_ok=True)
    w = write(a); drop(); c = copy(a, b); drop(); r = read(b)
    rows.append((w, c, r)); os.remove(a); os.remove(b)
w, c, r = (statistics.median(x) for x in zip(*rows))
raw = w + c + r
print(f"raw, same storage, {size / 2**20:.0f} MiB (median of 3): write+fsync {w:.2f} s, "
      f"copy node1 -> node0 with fsync (cold) {c:.2f} s, cold read {r:.2f} s; sum {raw:.2f} s")
if freezes:
    f = statistics.median(freezes)
    print(f"total freeze, median of {len(freezes)} migrations: {f:.2f} s = {f / raw:.2f}x the raw "
          f"sum (target <= 1.5x)")
EOF
