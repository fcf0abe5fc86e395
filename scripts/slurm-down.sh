#!/usr/bin/env bash
# slurm-down.sh -- stop what slurm-up.sh started (same LAB_DIR).
# Stops processes only by the PIDs recorded in $LAB_DIR pid files (never by name).
# Order: cancel jobs -> slurmd's -> slurmctld -> munged.
#   PURGE=1  additionally deletes $LAB_DIR (state, logs, key) for a truly fresh next start.
set -uo pipefail
LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/ckpt-lab/slurm}
export SLURM_CONF="$LAB_DIR/etc/slurm.conf"

# alive = exists and is not a zombie. kill -0 succeeds on a zombie, and PID 1 on some
# hosts (e.g. a microVM init) reaps orphans only every second or so: a dead slurmctld
# then still looks alive and every client command below blocks for MessageTimeout.
pid_state() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1; }
proc_alive() { local st; st=$(pid_state "$1"); [ -n "$st" ] && [ "$st" != Z ]; }
pid_alive() { [ -s "$1" ] && proc_alive "$(cat "$1")"; }
stop_pidfiles() {  # stop_pidfiles <label> <pidfile>...: SIGTERM all at once, wait <=15 s, SIGKILL
    local what=$1 f pid pids=(); shift
    for f in "$@"; do
        if pid_alive "$f"; then pid=$(cat "$f"); pids+=("$pid"); echo "stopping $what ${f##*/} (pid $pid)"; kill -TERM "$pid" 2>/dev/null; fi
        rm -f "$f"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 150); do proc_alive "$pid" || break; sleep 0.1; done
        if proc_alive "$pid"; then echo "  pid $pid did not exit, SIGKILL"; kill -KILL "$pid"; fi
    done
}

# 1. cancel all jobs so no slurmstepd / user processes are left behind
#    (bounded: with an unresponsive controller scancel blocks ~38 s and squeue ~19 s)
if pid_alive "$LAB_DIR/run/slurmctld.pid"; then
    timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(timeout 3 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
# 2. slurmd daemons (one per emulated node, pid files slurmd-<node>.pid)
shopt -s nullglob
stop_pidfiles slurmd "$LAB_DIR"/run/slurmd-*.pid     # in parallel: each takes ~2.5 s to exit
# slurmstepd processes can outlive a killed slurmd (they are re-parented to pid 1). Find the
# ones belonging to THIS LAB_DIR through the step sockets they hold in the spool dirs
# (<spool>/<node>/<host>_<job>.<step>) -- by socket inode in /proc, not by process name.
sock_pids() {
    local ino; ino=$(awk -v p="$1" '$NF==p {print $7}' /proc/net/unix)
    [ -n "$ino" ] || return 0
    for fd in /proc/[0-9]*/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$ino]" ] && { p=${fd#/proc/}; echo "${p%%/*}"; }
    done | sort -u
}
# SIGKILLing a slurmstepd orphans its job (batch script, srun, tasks keep running under
# pid 1), so kill each leftover stepd together with all its descendants (from /proc ppids).
descendants() {  # descendants <pid>...: every process below the given pids
    local s
    for s in /proc/[0-9]*/stat; do sed -n 's/^\([0-9]*\) .*) [A-Za-z] \([0-9]*\) .*/\1 \2/p' "$s" 2>/dev/null; done |
    awk -v roots="$*" 'BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        { par[$1] = $2 }
        END { do { more = 0; for (p in par) if (!(p in want) && (par[p] in want)) { want[p] = 1; more = 1; print p } } while (more) }'
}
stepds=()
for sock in "$LAB_DIR"/spool/*/*_*.*; do
    [ -S "$sock" ] || continue
    for p in $(sock_pids "$sock"); do stepds+=("$p"); done
    rm -f "$sock"
done
if [ ${#stepds[@]} -gt 0 ]; then
    mapfile -t stepds < <(printf '%s\n' "${stepds[@]}" | sort -un)
    kids=$(descendants "${stepds[@]}")
    echo "killing leftover slurmstepd ${stepds[*]} and their job processes:" $kids
    kill -KILL "${stepds[@]}" $kids 2>/dev/null
fi
# 3. controller
stop_pidfiles slurmctld "$LAB_DIR/run/slurmctld.pid"
# 4. munge
stop_pidfiles munged "$LAB_DIR/munge/munged.pid"

if [ "${PURGE:-0}" = 1 ]; then echo "purging $LAB_DIR"; rm -rf "$LAB_DIR"; fi
echo "slurm-local down"
