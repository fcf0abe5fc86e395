#!/usr/bin/env python3
"""bench-alloc.py DIR -- what writing 256 MiB in 4 MiB writes + fsync costs on DIR's file
system: to a new file, overwriting a recycled file in place, and truncating and rewriting one
file. This is why ckpt recycles pruned rank files (see BENCHMARKS.md)."""
import os
import sys
import time

CHUNK = 4 << 20
data = os.urandom(CHUNK) * 64


def write(path, flags):
    t0 = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags)
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        os.write(fd, view[i:i + CHUNK])
    os.fsync(fd)
    os.close(fd)
    return time.time() - t0


base = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "bench-alloc")
os.makedirs(base, exist_ok=True)
rows = {"new file": [], "recycled, overwritten in place": [], "truncated and rewritten": []}
try:
    for rep in range(5):
        d = os.path.join(base, f"e{rep}")
        os.makedirs(d)
        rows["new file"].append(write(os.path.join(d, "new"), os.O_TRUNC))
        if rep > 0:
            recycled = os.path.join(d, "recycled")
            os.rename(os.path.join(base, f"e{rep - 1}", "new"), recycled)
            rows["recycled, overwritten in place"].append(write(recycled, 0))
        rows["truncated and rewritten"].append(write(os.path.join(base, "same"), os.O_TRUNC))
finally:
    for root, dirs, files in os.walk(base, topdown=False):
        for f in files:
            os.remove(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(base)
for name, times in rows.items():
    times.sort()
    med = times[len(times) // 2]
    print(f"{name:32s} median {med:6.3f} s  {len(data) / med / 1e9:5.2f} GB/s  ({len(times)} runs)")
