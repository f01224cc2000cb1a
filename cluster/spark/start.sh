#!/usr/bin/env bash
# Start a Spark standalone cluster over ssh: the master on the first host of HOSTS_FILE, one worker
# on each other host. Every host needs Java 17 and img2dataset-ng[spark] (pyspark) for $PYTHON.
# Progress goes to stderr; the last line on stdout is the master URL, so
#   MASTER=$(cluster/spark/start.sh hosts)
# Running it again leaves running daemons as they are and starts the missing ones.
#
# Settings (environment variables):
#   SSH                      how to run a command on a host, called as `$SSH HOST 'command'`
#                            (words split on spaces; default: ssh -o BatchMode=yes)
#   PYTHON                   the interpreter on the hosts that imports pyspark (default: python3)
#   CLUSTER_DIR              logs/ and pids/ on each host, worker scratch in work/ (default: /tmp/img2dataset-ng-spark)
#   SPARK_PORT               master port (default: 7077)
#   SPARK_WEBUI_PORT         master web UI port (default: 8080)
#   SPARK_WORKER_WEBUI_PORT  worker web UI port (default: 8081)
#   SPARK_WORKER_PORT        worker port (default: empty, a random free port)
#   SPARK_WORKER_CORES       cores each worker offers (default: empty, all cores of its host)
#   SPARK_WORKER_MEMORY      memory each worker offers, e.g. 24g (default: empty, the host's memory minus 1 GiB)
#   SPARK_MASTER_OPTS        JVM -D options of the master, after the two start.sh always sets:
#                            -Dspark.port.maxRetries=0 (fail when a port is taken, rather than
#                            move to the next one and leave the printed URL wrong) and
#                            -Dspark.master.rest.enabled=false (no REST job submission port)
#   SPARK_WORKER_OPTS        JVM -D options of the workers, e.g. -Dspark.worker.cleanup.enabled=true
#   START_TIMEOUT            seconds to wait for each daemon to be ready (default: 120)
# Each daemon binds the host name given in the file (--host and SPARK_LOCAL_IP); a `user@` prefix is
# used for ssh only. The workers reach the master under the first line's name.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  say "usage: $0 HOSTS_FILE"
  exit 2
fi

SPARK_PORT=${SPARK_PORT:-7077}
SPARK_WEBUI_PORT=${SPARK_WEBUI_PORT:-8080}
SPARK_WORKER_WEBUI_PORT=${SPARK_WORKER_WEBUI_PORT:-8081}
SPARK_WORKER_PORT=${SPARK_WORKER_PORT:-}
SPARK_WORKER_CORES=${SPARK_WORKER_CORES:-}
SPARK_WORKER_MEMORY=${SPARK_WORKER_MEMORY:-}
SPARK_MASTER_OPTS=${SPARK_MASTER_OPTS:-}
SPARK_WORKER_OPTS=${SPARK_WORKER_OPTS:-}
START_TIMEOUT=${START_TIMEOUT:-120}

read_hosts "$1"
master=$(bind_host "$MASTER_HOST")
url="spark://$master:$SPARK_PORT"

say "starting the master on $MASTER_HOST"
on_host "$MASTER_HOST" remote_start master "$master" "$PYTHON" "$CLUSTER_DIR" "$START_TIMEOUT" \
  "$MASTER_CLASS" "New state: ALIVE" "-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false $SPARK_MASTER_OPTS" \
  --host "$master" --port "$SPARK_PORT" --webui-port "$SPARK_WEBUI_PORT" 2>&1 | prefix "$MASTER_HOST" ||
  die "the master did not start on $MASTER_HOST"

say "starting ${#WORKER_HOSTS[@]} worker(s)"
launched=()
for host in "${WORKER_HOSTS[@]}"; do
  bind=$(bind_host "$host")
  args=(--host "$bind" --webui-port "$SPARK_WORKER_WEBUI_PORT" --work-dir "$CLUSTER_DIR/work")
  if [[ -n $SPARK_WORKER_PORT ]]; then args+=(--port "$SPARK_WORKER_PORT"); fi
  if [[ -n $SPARK_WORKER_CORES ]]; then args+=(--cores "$SPARK_WORKER_CORES"); fi
  if [[ -n $SPARK_WORKER_MEMORY ]]; then args+=(--memory "$SPARK_WORKER_MEMORY"); fi
  (on_host "$host" remote_start worker "$bind" "$PYTHON" "$CLUSTER_DIR" "$START_TIMEOUT" \
    "$WORKER_CLASS" "Successfully registered with master" "$SPARK_WORKER_OPTS" \
    "${args[@]}" "$url" 2>&1 | prefix "$host") &
  launched+=("$!")
done
failed=()
for i in "${!launched[@]}"; do
  wait "${launched[$i]}" || failed+=("${WORKER_HOSTS[$i]}")
done
if ((${#failed[@]} > 0)); then
  printf -v failed_list '%s, ' "${failed[@]}"
  die "no worker on ${failed_list%, } (see above); fix and run start.sh again, or stop.sh $1 to stop everything"
fi

say "Spark master web UI: http://$master:$SPARK_WEBUI_PORT"
printf '%s\n' "$url"
