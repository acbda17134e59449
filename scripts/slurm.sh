#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of hydra/launcher=slurm and to try it out.
#   bash scripts/slurm.sh start   # installs Debian's slurm-wlm and munge if missing (apt-get, as root),
#                                 # then starts munged, slurmctld and slurmd; prints the SLURM_CONF to use
#   bash scripts/slurm.sh stop    # stops what start started
# Both are idempotent. Nothing system-wide is configured: the config, keys, sockets, logs and state are
# in $PADDY_SLURM_DIR (default /tmp/paddy-slurm), and SLURM's commands find the cluster through
#   export SLURM_CONF=$PADDY_SLURM_DIR/slurm.conf
# Exit status 3: this machine cannot run it (not root, no apt-get); the reason is on stderr.
set -euo pipefail

dir=${PADDY_SLURM_DIR:-/tmp/paddy-slurm}
conf=$dir/slurm.conf
export SLURM_CONF=$conf

unavailable() { echo "slurm.sh: $*" >&2; exit 3; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  [ "$(id -u)" -eq 0 ] || unavailable "SLURM is not installed and installing it needs root"
  command -v apt-get >/dev/null || unavailable "SLURM is not installed and there is no apt-get to install it"
  echo "slurm.sh: installing slurm-wlm and munge with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || unavailable "apt-get could not install slurm-wlm and munge"
}

running() { [ -f "$conf" ] && timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }  # a pid file whose process runs

start() {
  if running; then
    echo "slurm.sh: already running; SLURM_CONF=$conf"
    return
  fi
  [ "$(id -u)" -eq 0 ] || unavailable "starting slurmd needs root"
  install
  # not up: end whatever an earlier start left half-running (by the pids it recorded) and start afresh,
  # without the job state of a cluster that is gone
  stop_daemons
  rm -rf "$dir/state" "$dir/spool" "$dir/munge/run"
  host=$(hostname -s)
  mkdir -p "$dir"/{state,spool,log} "$dir"/munge/{key,run}
  # munge: its own key, socket and pid file here, run as the munge user. It wants the key readable by
  # that user only and the socket's folder reachable by everyone.
  if [ ! -f "$dir/munge/key/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/key/munge.key" bs=1024 count=1 status=none
  fi
  chown -R munge:munge "$dir/munge"
  chmod 755 "$dir" "$dir/munge" "$dir/munge/run" && chmod 700 "$dir/munge/key" && chmod 400 "$dir/munge/key/munge.key"
  runuser -u munge -- munged --key-file="$dir/munge/key/munge.key" --socket="$dir/munge/run/munge.socket" \
    --pid-file="$dir/munge/run/munged.pid" --log-file="$dir/munge/key/munged.log" \
    --seed-file="$dir/munge/key/munged.seed"
  for try in $(seq 20); do
    munge -n -S "$dir/munge/run/munge.socket" 2>/dev/null | unmunge -S "$dir/munge/run/munge.socket" >/dev/null 2>&1 \
      && break
    [ "$try" -lt 20 ] || { echo "slurm.sh: munged does not answer; see $dir/munge/key/munged.log" >&2; exit 1; }
    sleep 0.25
  done
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  # the cores this process may use; nproc would also obey OMP_NUM_THREADS, which the tests set to 1
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  cat > "$conf" <<CONF
ClusterName=paddy
SlurmctldHost=$host
SlurmctldPort=${PADDY_SLURM_PORT:-6917}
SlurmdPort=$(( ${PADDY_SLURM_PORT:-6917} + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/run/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( mem_mb / cpus / 2 ))
CONF
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 30); do
    if running && sinfo -h -o %T 2>/dev/null | grep -qxE "idle|mixed|allocated"; then
      echo "slurm.sh: started (munged, slurmctld, slurmd); SLURM_CONF=$conf"
      return
    fi
    sleep 1
  done
  echo "slurm.sh: the node did not come up; logs in $dir/log" >&2
  exit 1
}

stop_daemons() {
  if running; then
    scontrol shutdown >/dev/null || true
  fi
  alive "$dir/munge/run/munged.pid" && kill "$(cat "$dir/munge/run/munged.pid")"
  for pidfile in "$dir/slurmctld.pid" "$dir/slurmd.pid" "$dir/munge/run/munged.pid"; do
    for i in $(seq 40); do
      alive "$pidfile" || break
      if [ "$i" -eq 20 ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi  # not gone after 5 s: end it
      sleep 0.25
    done
    rm -f "$pidfile"
  done
}

stop() {
  stop_daemons
  echo "slurm.sh: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 64 ;;
esac
