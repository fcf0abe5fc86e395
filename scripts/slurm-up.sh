#!/usr/bin/env bash
# slurm-up.sh -- bring up a REAL single-host Slurm "cluster" with N emulated nodes.
#
# Tested on Debian 12 (bookworm), slurm-wlm 22.05.8 (Debian build has MULTIPLE_SLURMD
# enabled, so several slurmd daemons -- one per emulated node -- can run on one host,
# each with its own Port= and `slurmd -N <name>`). No systemd, no cgroups, no accounting.
# Must run as root (slurmd runs jobs as the submitting user; we keep everything root).
#
# Idempotent: installs packages if missing, (re)writes config, starts only daemons that
# are not already running, then waits until `sinfo` reports all nodes idle.
#
# Everything (config, state, spool, logs, munge socket/key) lives under $LAB_DIR.
# Clients need:   export SLURM_CONF=$LAB_DIR/etc/slurm.conf
# Stop with:      slurm-down.sh   (same LAB_DIR)
#
# Knobs (env):
#   LAB_DIR=${TMPDIR:-/tmp}/ckpt-lab/slurm    NNODES=4    CPUS_PER_NODE=4    MEM_PER_NODE_MB=2048
#   CTLD_PORT=6817            SLURMD_BASE_PORT=17000 (node i listens on BASE+i)
#   PARTITION=debug           WAIT_SECS=60
set -euo pipefail

LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/ckpt-lab/slurm}
NNODES=${NNODES:-4}
CPUS_PER_NODE=${CPUS_PER_NODE:-4}
MEM_PER_NODE_MB=${MEM_PER_NODE_MB:-2048}
CTLD_PORT=${CTLD_PORT:-6817}
SLURMD_BASE_PORT=${SLURMD_BASE_PORT:-17000}
PARTITION=${PARTITION:-debug}
WAIT_SECS=${WAIT_SECS:-60}

ts() { date +%s.%N; }
T0=$(ts)
step() { printf '[slurm-up %6.1fs] %s\n' "$(awk -v a="$(ts)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
for b in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${b%%:*}" >/dev/null 2>&1 || need_pkgs+=("${b##*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    step "installing: ${need_pkgs[*]}"
    # No init system here (or in CI containers): stop postinst scripts from trying to
    # start the daemons. Only create policy-rc.d if none exists, and remove it after.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT     # removed even if the install fails
    fi
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
    }
    # A fresh container (e.g. debian:bookworm) has empty /var/lib/apt/lists: without an
    # update, install fails with "E: Unable to locate package slurmctld". Stale lists can
    # also 404. So: update first when there are no lists, and retry once after an update.
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
        step "no apt lists: apt-get update"; apt-get update -qq
    fi
    if ! apt_install; then
        step "install failed: apt-get update and retry"; apt-get update -qq; apt_install
    fi
    if [ -e /usr/sbin/policy-rc.d ] && trap -p EXIT | grep -q policy-rc.d; then
        rm -f /usr/sbin/policy-rc.d; trap - EXIT
    fi
    step "install done"
fi

# ---------------------------------------------------------------- 2. dirs
mkdir -p "$LAB_DIR"/{etc,state,spool,log,run,munge,tmp}
chmod 755 "$LAB_DIR" "$LAB_DIR"/{etc,state,spool,log,run}; chmod 1777 "$LAB_DIR/tmp"
# munged is picky: its dirs must be owned by the munge user, not group/other writable,
# and the socket dir must be world-executable (755). The key itself is 0400.
# munged also insists that every directory above its socket is world-executable
# ("Socket is inaccessible: execute permissions for all required on ...") and, as user
# munge, it cannot even reach a log file under a root-only directory. A private TMPDIR
# (mktemp -d / pytest tmp_path: mode 0700) breaks both: "munged: Error: Failed to check
# logfile ...: Permission denied". In that case run munged as root with --force (the
# check becomes a warning); every Slurm daemon and client here is root anyway.
world_x_path() {  # every ancestor of $1 (inclusive) has o+x
    local d; d=$(readlink -f "$1")
    while :; do
        [ -n "$(find "$d" -maxdepth 0 -perm -o=x 2>/dev/null)" ] || return 1
        [ "$d" = / ] && return 0
        d=$(dirname "$d")
    done
}
if world_x_path "$LAB_DIR"; then MUNGE_USER=munge; MUNGED_OPTS=(); else
    MUNGE_USER=root; MUNGED_OPTS=(--force)
    step "note: $LAB_DIR is not world-traversable: running munged as root (--force)"
fi
chown "$MUNGE_USER:$MUNGE_USER" "$LAB_DIR/munge"; chmod 755 "$LAB_DIR/munge"   # socket dir needs o+x
MUNGE_SOCK="$LAB_DIR/munge/munge.socket.2"

# ---------------------------------------------------------------- 3. munge
if [ ! -s "$LAB_DIR/munge/munge.key" ]; then
    step "generating munge key"
    # mungekey(8) exists in munge >= 0.5.14; fall back to dd.
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$LAB_DIR/munge/munge.key" --force
    else
        dd if=/dev/urandom of="$LAB_DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
fi
# (re)own key, log, seed: the owner depends on MUNGE_USER, which can differ between runs
chown -R "$MUNGE_USER:$MUNGE_USER" "$LAB_DIR/munge"; chmod 400 "$LAB_DIR/munge/munge.key"
# alive = exists and is not a zombie (kill -0 succeeds on zombies; PID 1 here reaps late)
proc_alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
pid_alive() { [ -s "$1" ] && proc_alive "$(cat "$1")"; }
if pid_alive "$LAB_DIR/munge/munged.pid"; then
    step "munged already running (pid $(cat "$LAB_DIR/munge/munged.pid"))"
else
    step "starting munged"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    runuser -u "$MUNGE_USER" -- /usr/sbin/munged "${MUNGED_OPTS[@]}" \
        --socket="$MUNGE_SOCK" --key-file="$LAB_DIR/munge/munge.key" \
        --pid-file="$LAB_DIR/munge/munged.pid" --log-file="$LAB_DIR/munge/munged.log" \
        --seed-file="$LAB_DIR/munge/munged.seed"
    for _ in $(seq 50); do [ -S "$MUNGE_SOCK" ] && break; sleep 0.1; done
fi
munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null && step "munge round-trip OK"

# ---------------------------------------------------------------- 4. slurm.conf
HOST=$(hostname -s)
CONF="$LAB_DIR/etc/slurm.conf"
cat > "$CONF.new" <<EOF
# generated by slurm-up.sh -- single host, $NNODES emulated nodes (multiple-slurmd)
ClusterName=lab
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$LAB_DIR/state
# %n = node name, so each emulated node gets its own spool / log / pid file
SlurmdSpoolDir=$LAB_DIR/spool/%n
SlurmctldPidFile=$LAB_DIR/run/slurmctld.pid
SlurmdPidFile=$LAB_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LAB_DIR/log/slurmctld.log
SlurmdLogFile=$LAB_DIR/log/slurmd-%n.log
# Per-node TmpFS: needed for srun --mpi=pmix with several slurmds on one host, otherwise
# every stepd tries to mkdir the same \$TmpFS/spmix_appdir_<uid>_<job>.<step> -> EEXIST
TmpFS=$LAB_DIR/tmp/%n
# Per-node environment for every task (see task_prolog.sh below): node-local storage dir
# and a per-node Open MPI shared-memory backing dir.
TaskProlog=$LAB_DIR/etc/task_prolog.sh
SlurmctldDebug=info
SlurmdDebug=info
# cgroup-free
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# emulated nodes may claim more CPUs/memory than the host has
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmdTimeout=60
MessageTimeout=20
NodeName=n[1-$NNODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[$((SLURMD_BASE_PORT+1))-$((SLURMD_BASE_PORT+NNODES))] CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
# TaskProlog: its stdout lines "export K=V" are added to each task's environment.
# Open MPI 4.1 names its vader shm segments vader_segment.<hostname>.<jobid>.<local_rank>;
# all emulated nodes share the real hostname, so local rank 0 on n1 and local rank 0 on n2
# would open the SAME segment -> segfault in mca_btl_vader_poll_handle_frag (observed with
# srun --mpi=pmix -N3 --ntasks-per-node=2). A per-node backing directory fixes it.
cat > "$LAB_DIR/etc/task_prolog.sh" <<PROLOG
#!/bin/sh
mkdir -p "$LAB_DIR/nodes/\$SLURMD_NODENAME/local" "$LAB_DIR/tmp/\$SLURMD_NODENAME/shm"
echo "export NODE_LOCAL_DIR=$LAB_DIR/nodes/\$SLURMD_NODENAME/local"
echo "export OMPI_MCA_btl_vader_backing_directory=$LAB_DIR/tmp/\$SLURMD_NODENAME/shm"
PROLOG
chmod 755 "$LAB_DIR/etc/task_prolog.sh"
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"; CONF_CHANGED=1; step "wrote $CONF"
else
    rm -f "$CONF.new"; CONF_CHANGED=0
fi
export SLURM_CONF="$CONF"

# ---------------------------------------------------------------- 5. daemons
# A changed slurm.conf needs a restart, not `scontrol reconfigure`: in 22.05 a different
# node count makes the running slurmctld exit ("fatal: MaxNodeCount has changed (4->5)
# during reconfig, slurmctld must be restarted"), and slurmd's only read CPUs etc. at
# start. Restarting keeps jobs (state is saved on SIGTERM; stepds outlive slurmd).
stop_pids() {  # stop_pids <pidfile>...: SIGTERM, wait <=15 s, SIGKILL; removes the files
    local f p pids=()
    for f in "$@"; do pid_alive "$f" && { p=$(cat "$f"); pids+=("$p"); kill -TERM "$p"; }; rm -f "$f"; done
    for p in "${pids[@]}"; do
        for _ in $(seq 150); do proc_alive "$p" || break; sleep 0.1; done
        proc_alive "$p" && kill -KILL "$p"
    done
    return 0
}
if [ $CONF_CHANGED = 1 ] && pid_alive "$LAB_DIR/run/slurmctld.pid"; then
    step "config changed: restarting slurmctld and slurmd's"
    shopt -s nullglob; stop_pids "$LAB_DIR/run/slurmctld.pid" "$LAB_DIR"/run/slurmd-*.pid; shopt -u nullglob
fi
if pid_alive "$LAB_DIR/run/slurmctld.pid"; then
    step "slurmctld already running"
else
    step "starting slurmctld"
    # -i: ignore state files that do not match the config (e.g. NNODES changed)
    slurmctld -i -f "$CONF"
fi
for i in $(seq 1 "$NNODES"); do
    n=n$i; mkdir -p "$LAB_DIR/spool/$n" "$LAB_DIR/tmp/$n"
    if pid_alive "$LAB_DIR/run/slurmd-$n.pid"; then continue; fi
    step "starting slurmd -N $n (port $((SLURMD_BASE_PORT+i)))"
    slurmd -f "$CONF" -N "$n"
done

# ---------------------------------------------------------------- 6. wait for idle
# "up" = responding and usable: idle, or running jobs (mixed/allocated) when this is a
# re-run on a busy cluster. A trailing * (not responding) does not count.
step "waiting for $NNODES nodes up (idle/mixed/allocated)"
ok=0
for _ in $(seq $((WAIT_SECS*2))); do
    # (a just-started slurmctld writes its pid file after daemonizing: only a pid file
    # whose process is gone means it died)
    if [ -s "$LAB_DIR/run/slurmctld.pid" ] && ! pid_alive "$LAB_DIR/run/slurmctld.pid"; then
        echo "slurmctld is not running; last log lines:" >&2
        tail -n 5 "$LAB_DIR/log/slurmctld.log" >&2; exit 1
    fi
    # timeout: a client blocks ~20 s (MessageTimeout) when the controller is unreachable
    states=$(timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null || true)
    up=$(awk '$2=="idle" || $2=="mix" || $2=="alloc"' <<<"$states" | wc -l)
    if [ "$up" -ge "$NNODES" ]; then ok=1; break; fi
    # nodes left DOWN/DRAIN from a previous run: resume them (|| true: with pipefail a
    # failing sinfo used to end the script here, silently, under set -e)
    awk '$2 ~ /down|drain|drng/ {print $1}' <<<"$states" |
        while read -r n; do scontrol update nodename="$n" state=resume 2>/dev/null || true; done || true
    sleep 0.5
done
timeout 5 sinfo -N -l || true
if [ $ok != 1 ]; then
    echo "nodes did not come up within ${WAIT_SECS}s; see $LAB_DIR/log/" >&2; exit 1
fi
step "cluster up"
cat <<EOF

Slurm is up. Use it with:
    export SLURM_CONF=$CONF
    srun -N 2 printenv SLURMD_NODENAME
Stop with:
    LAB_DIR=$LAB_DIR $(dirname "$(readlink -f "$0")")/slurm-down.sh
EOF
