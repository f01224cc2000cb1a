#!/usr/bin/env bash
# Stop the Spark standalone cluster that start.sh started from HOSTS_FILE: the workers first (in
# parallel), then the master. Each daemon is found by its pid file in $CLUSTER_DIR/pids on its host
# and gets SIGTERM with its process group (its executors too), then SIGKILL after STOP_GRACE seconds.
# Logs stay in $CLUSTER_DIR/logs (worker scratch in $CLUSTER_DIR/work).
#
# Settings (environment variables): SSH and CLUSTER_DIR as for start.sh, and
#   STOP_GRACE   seconds between SIGTERM and SIGKILL (default: 20)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  say "usage: $0 HOSTS_FILE"
  exit 2
fi

STOP_GRACE=${STOP_GRACE:-20}

read_hosts "$1"

say "stopping ${#WORKER_HOSTS[@]} worker(s)"
launched=()
for host in "${WORKER_HOSTS[@]}"; do
  (on_host "$host" remote_stop worker "$CLUSTER_DIR" "$WORKER_CLASS" "$STOP_GRACE" 2>&1 | prefix "$host") &
  launched+=("$!")
done
failed=()
for i in "${!launched[@]}"; do
  wait "${launched[$i]}" || failed+=("worker on ${WORKER_HOSTS[$i]}")
done

say "stopping the master on $MASTER_HOST"
on_host "$MASTER_HOST" remote_stop master "$CLUSTER_DIR" "$MASTER_CLASS" "$STOP_GRACE" 2>&1 | prefix "$MASTER_HOST" ||
  failed+=("master on $MASTER_HOST")

if ((${#failed[@]} > 0)); then
  printf -v failed_list '%s, ' "${failed[@]}"
  die "could not stop the ${failed_list%, }"
fi
say "stopped"
