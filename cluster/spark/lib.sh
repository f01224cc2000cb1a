# shellcheck shell=bash
# Shared by start.sh and stop.sh (sourced, not run): settings, the hosts file, and running one of
# the remote_* functions below on a host over $SSH. The remote_* functions are sent to the host
# with `declare -f` and run there by bash (which every Spark host has: spark-class is a bash script).

# shellcheck disable=SC2034 # PYTHON, CLUSTER_DIR and the classes are used by start.sh and stop.sh
{
  SSH=${SSH:-ssh -o BatchMode=yes}
  PYTHON=${PYTHON:-python3}
  CLUSTER_DIR=${CLUSTER_DIR:-/tmp/img2dataset-ng-spark}
  MASTER_CLASS=org.apache.spark.deploy.master.Master
  WORKER_CLASS=org.apache.spark.deploy.worker.Worker
}
read -r -a SSH_CMD <<<"$SSH"

say() { printf '%s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# quote WORD: WORD as one single-quoted word for the remote shell.
quote() {
  local escaped=${1//\'/\'\\\'\'}
  printf "'%s'" "$escaped"
}

# bind_host SSH_TARGET: the host name a daemon binds (the ssh target without any user@).
bind_host() { printf '%s' "${1##*@}"; }

# prefix NAME: copies stdin to stderr, each line prefixed with NAME.
prefix() {
  local line
  while IFS= read -r line; do
    printf '%s: %s\n' "$1" "$line" >&2
  done
}

# read_hosts FILE: sets MASTER_HOST (first host) and WORKER_HOSTS (the others, duplicates dropped).
# One host a line, as ssh takes it (`host` or `user@host`); blank lines and # comments are ignored.
# shellcheck disable=SC2034 # MASTER_HOST and WORKER_HOSTS are for the caller
read_hosts() {
  local file=$1 line host extra
  local -A seen=()
  [[ -f $file && -r $file ]] || die "cannot read the hosts file $file"
  MASTER_HOST=""
  WORKER_HOSTS=()
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    host="" extra=""
    read -r host extra <<<"$line" || true
    [[ -n $host ]] || continue
    [[ -z $extra ]] || die "$file: one host a line, got '$line'"
    if [[ -z $MASTER_HOST ]]; then
      MASTER_HOST=$host
    elif [[ -n ${seen[$host]:-} ]]; then
      say "warning: $host is listed twice in $file; it gets one worker"
    else
      seen[$host]=1
      WORKER_HOSTS+=("$host")
    fi
  done <"$file"
  [[ -n $MASTER_HOST ]] || die "$file names no host"
  ((${#WORKER_HOSTS[@]} > 0)) || die "$file names a master ($MASTER_HOST) but no worker host"
}

# on_host HOST FUNCTION ARGS...: runs remote FUNCTION with ARGS on HOST via $SSH. The functions
# go to `bash -s` on stdin, so only ARGS (one line) pass through the quoting of the remote shell.
on_host() {
  local host=$1 fn=$2 arg remote_command="bash -s --"
  shift 2
  for arg in "$@"; do
    remote_command+=" $(quote "$arg")"
  done
  # shellcheck disable=SC2016 # "$@" is the remote bash's
  { declare -f remote_pid remote_group_alive "$fn" && printf '%s "$@"\n' "$fn"; } |
    "${SSH_CMD[@]}" "$host" "$remote_command"
}

# ---- run on the hosts -------------------------------------------------------------------------

# remote_pid PIDFILE CLASS: prints the pid in PIDFILE if that process is alive (not a zombie) and
# runs CLASS; fails otherwise (no file, stale pid, or a pid reused by another program).
# shellcheck disable=SC2317 # called on the host, through on_host
remote_pid() {
  local pid state args
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  state=${state//[[:space:]]/}
  [[ -n $state && $state != Z* ]] || return 1
  args=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
  [[ $args == *"$2"* ]] || return 1
  printf '%s\n' "$pid"
}

# remote_group_alive PGID: whether a live (not zombie) process is left in process group PGID.
# shellcheck disable=SC2317 # called on the host, through on_host
remote_group_alive() {
  local group state
  while read -r group state; do
    if [[ $group == "$1" && $state != Z* ]]; then
      return 0
    fi
  done < <(ps -e -o pgid= -o stat=)
  return 1
}

# remote_start ROLE BIND PYTHON DIR TIMEOUT CLASS READY OPTS SPARK_ARGS...: starts `spark-class CLASS
# SPARK_ARGS...` detached in its own session (bound to BIND, logging to DIR/logs/ROLE.log, its pid
# in DIR/pids/ROLE.pid), unless it already runs; then waits up to TIMEOUT seconds for READY in the log.
# OPTS goes to SPARK_MASTER_OPTS or SPARK_WORKER_OPTS (JVM -D options of the daemon).
# shellcheck disable=SC2317 # called on the host, through on_host
remote_start() {
  set -eu
  local role=$1 bind=$2 python=$3 dir=$4 timeout=$5 class=$6 ready=$7 opts=$8
  shift 8
  local pidfile=$dir/pids/$role.pid log=$dir/logs/$role.log home pid waited=0
  command -v "$python" >/dev/null || {
    echo "$python not found on $HOSTNAME; set PYTHON to the interpreter that has img2dataset-ng[spark]" >&2
    return 1
  }
  home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') || {
    echo "$python on $HOSTNAME cannot import pyspark: pip install 'img2dataset-ng[spark]'" >&2
    return 1
  }
  if [[ -z ${JAVA_HOME:-} ]] && ! command -v java >/dev/null; then
    echo "no java on $HOSTNAME: install Java 17 (Debian/Ubuntu: apt-get install default-jre-headless)" >&2
    return 1
  fi
  mkdir -p "$dir/pids" "$dir/logs"
  if pid=$(remote_pid "$pidfile" "$class"); then
    echo "$role already running (pid $pid), left as it is; stop.sh stops it"
  else
    rm -f "$pidfile"
    : >"$log" # emptied here, before the launch, so an old run's READY line cannot count
    if [[ $role == master ]]; then export SPARK_MASTER_OPTS=$opts; else export SPARK_WORKER_OPTS=$opts; fi
    # setsid: its own session and process group (pgid = pid), so stop.sh can end it with its executors,
    # and nothing here takes it down; spark-class execs java, so the pid written is the daemon's.
    # shellcheck disable=SC2016 # $$, $0 and $@ are the inner bash's
    SPARK_HOME=$home SPARK_LOCAL_IP=$bind nohup setsid bash -c 'echo "$$" >"$0" && exec "$@"' \
      "$pidfile" "$home/bin/spark-class" "$class" "$@" >>"$log" 2>&1 </dev/null &
  fi
  until grep -qF "$ready" "$log" 2>/dev/null; do
    if [[ -s $pidfile ]] && ! remote_pid "$pidfile" "$class" >/dev/null; then
      echo "the $role exited; last lines of $log:" >&2
      tail -n 25 "$log" >&2
      return 1
    fi
    if ((waited >= timeout)); then
      echo "the $role did not log '$ready' within ${timeout}s (still running; stop.sh stops it); last lines of $log:" >&2
      tail -n 25 "$log" >&2
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "$role up on $bind (pid $(cat "$pidfile"), log $log)"
}

# remote_stop ROLE DIR CLASS GRACE: SIGTERM to the process group of the ROLE daemon (the daemon and
# the executors it launched), SIGKILL to what is left after GRACE seconds; removes the pid file.
# shellcheck disable=SC2317 # called on the host, through on_host
remote_stop() {
  set -eu
  local role=$1 dir=$2 class=$3 grace=$4
  local pidfile=$dir/pids/$role.pid pid waited=0 signal=TERM
  if ! pid=$(remote_pid "$pidfile" "$class"); then
    if [[ -e $pidfile ]]; then
      rm -f "$pidfile"
      echo "$role was not running (stale pid file removed)"
    else
      echo "no $role pid file in $dir/pids: nothing to stop"
    fi
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while remote_group_alive "$pid"; do
    if ((waited == grace)); then
      echo "$role (pid $pid) still running after ${grace}s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      signal=KILL
    elif ((waited >= grace + 10)); then
      echo "$role (pid $pid) survived SIGKILL" >&2
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  echo "$role stopped (pid $pid, SIG$signal)"
}
