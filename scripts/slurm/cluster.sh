#!/usr/bin/env bash
# A private single-node SLURM cluster (with accounting) for the test suite, as root, without
# systemd or cgroups. Nothing is written to /etc: every client and daemon finds the cluster
# through SLURM_CONF=<dir>/slurm.conf.
#
#   scripts/slurm/cluster.sh start DIR   # munge, MariaDB, slurmdbd, slurmctld, slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm/cluster.sh stop DIR    # cancel jobs, stop every daemon this script started (recorded PIDs;
#                                        # munged only when no other cluster runs)
#   scripts/slurm/cluster.sh status DIR  # sinfo + the daemons' PIDs
#
# Why each piece (measured on Debian 12, SLURM 22.05; see ../shared/notes/slurm.md):
# - accounting (slurmdbd + a private MariaDB in DIR/db): submitit reads job states through
#   `sacct`; without it a job killed from outside is never seen as finished and the launcher hangs;
# - munged runs as the munge user (it refuses root) with /run/munge made by hand (systemd's
#   RuntimeDirectory= normally makes it); an already running munged is reused, never stopped;
# - every port is picked free at start (SlurmctldPort, SlurmdPort, DbdPort, MariaDB), so a
#   second cluster on the same machine (two test sessions) does not collide with the first;
# - short cred_expire and scheduler intervals: a requeued job otherwise waits ~3 minutes.
# Exit codes: 0 ok, 2 usage, 3 missing binaries or not root, 1 a daemon did not come up (its log is printed).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
D=$(mkdir -p "$2" && cd "$2" && pwd)
export SLURM_CONF="$D/slurm.conf"
BINARIES="munged munge unmunge mariadbd mariadb-install-db mariadb-admin mariadb slurmdbd slurmctld slurmd sinfo sbatch sacct scancel squeue"

die() { echo "slurm cluster: $*" >&2; exit 1; }

show_log() {  # the tail of a daemon's log, for a start that failed
    for f in "$D"/log/*; do [ -s "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
    return 0
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local until=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $until ] || { show_log; die "$what did not come up within ${until}s"; }
        sleep 0.2
    done
}

alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat")" != Z ]; }

free_port() {  # a TCP port nobody listens on now (the kernel's choice)
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

spawn() {  # spawn NAME COMMAND...: run in the background, detached, PID recorded in DIR/NAME.bgpid
    local name=$1; shift
    setsid "$@" >"$D/log/$name.out" 2>&1 < /dev/null &
    echo $! > "$D/$name.bgpid"
}

check_requirements() {
    local missing=""
    for b in $BINARIES; do command -v "$b" >/dev/null 2>&1 || missing="$missing $b"; done
    [ -z "$missing" ] || { echo "slurm cluster: missing binaries:$missing (apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server)" >&2; exit 3; }
    [ "$(id -u)" -eq 0 ] || { echo "slurm cluster: must run as root (slurmd and munged need it)" >&2; exit 3; }
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # a running munged: reuse
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged || { tail -n 5 /var/log/munge/munged.log >&2 || true; die "munged failed"; }
    cp /run/munge/munged.pid "$D/munged.bgpid"  # ours: stop stops it
    wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    local port=$1
    [ -d "$D/db/mysql" ] || mariadb-install-db --no-defaults --datadir="$D/db" --user=root \
        --auth-root-authentication-method=socket --skip-test-db > "$D/log/mariadb-install.out" 2>&1 \
        || { show_log; die "mariadb-install-db failed"; }
    spawn mariadb mariadbd --no-defaults --datadir="$D/db" --user=root --bind-address=127.0.0.1 \
        --port="$port" --socket="$D/mysql.sock" --pid-file="$D/mariadb.pid" --log-error="$D/log/mariadb.log" \
        --innodb-buffer-pool-size=32M --skip-name-resolve
    wait_for 30 MariaDB mariadb-admin --no-defaults --socket="$D/mysql.sock" ping
    mariadb --no-defaults --socket="$D/mysql.sock" -u root -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"
}

write_configs() {
    local ctld=$1 slurmd_port=$2 dbd=$3 db=$4 host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n1)
    cat > "$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db
StorageUser=slurm
StoragePass=slurm
EOF
    chmod 0600 "$D/slurmdbd.conf"  # slurmdbd refuses a config others can read
    cat > "$D/slurm.conf" <<EOF
ClusterName=kscaletest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld
SlurmdPort=$slurmd_port
SlurmUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=2
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() { [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; }

start() {
    check_requirements
    if [ -f "$D/slurmctld.bgpid" ] && alive "$(cat "$D/slurmctld.bgpid")"; then
        echo "export SLURM_CONF=$SLURM_CONF"; return 0  # already up
    fi
    mkdir -p "$D/state" "$D/spool" "$D/log"
    start_munge
    local db ctld slurmd_port dbd
    db=$(free_port); ctld=$(free_port); slurmd_port=$(free_port); dbd=$(free_port)
    start_mariadb "$db"
    write_configs "$ctld" "$slurmd_port" "$dbd" "$db"
    spawn slurmdbd slurmdbd -D
    wait_for 30 slurmdbd python3 -c "import socket; socket.create_connection(('127.0.0.1', $dbd), 1)"
    spawn slurmctld slurmctld -D
    spawn slurmd slurmd -D
    wait_for 30 "an idle node" node_idle
    wait_for 30 "accounting (sacct)" sacct -n -X
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid NAME: TERM, then KILL after 10 s, the process recorded in DIR/NAME.bgpid
    local file="$D/$1.bgpid" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

other_slurmctld() {  # another cluster's slurmctld is running (zombies of stopped ones do not count)
    command -v pgrep >/dev/null || return 1
    for pid in $(pgrep -x slurmctld); do alive "$pid" && return 0; done
    return 1
}

stop() {
    if [ -f "$D/slurmctld.bgpid" ] && alive "$(cat "$D/slurmctld.bgpid")"; then
        scancel --quiet --user=root 2>/dev/null || true  # a test's leftover jobs
        for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for name in slurmd slurmctld slurmdbd mariadb; do stop_pid "$name"; done
    # munged is shared: a cluster another session started later may be using the one we started
    if other_slurmctld; then
        [ -f "$D/munged.bgpid" ] && echo "slurm cluster: munged left running (another cluster uses it)" >&2
        rm -f "$D/munged.bgpid"
    else
        stop_pid munged
    fi
}

status() {
    sinfo 2>&1 || true
    for f in "$D"/*.bgpid; do [ -f "$f" ] && echo "$(basename "$f" .bgpid) $(cat "$f")"; done
    return 0
}

case $CMD in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
