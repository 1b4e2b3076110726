#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, for trying the cluster path of `sweep run`:
# a head node with no CPU or GPU (like the cloud configs' head) plus N worker nodes that declare
# GPUs (declared only: Ray schedules by the numbers, the trainable sees CUDA_VISIBLE_DEVICES).
#
# Every node runs with its own --temp-dir (the cluster dir), so `stop` ends exactly this cluster's
# processes and no other Ray on the machine (`ray stop` would end them all), and a plain
# `ray.init()` elsewhere does not join this cluster by accident.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 start [-w WORKERS] [-g GPUS] [-c CPUS] [-p PORT] [-d DIR]
       $0 stop [-d DIR]
       $0 address [-d DIR]

  start    a head node (0 CPU, 0 GPU) and WORKERS worker nodes with GPUS GPUs and CPUS CPUs each
           (defaults: 2 workers, 1 GPU, 1 CPU), GCS on PORT (default: a free port); prints the
           address for \`sweep run CONFIG --address ADDRESS\`
  stop     end this cluster's processes (those of DIR only; other Ray instances keep running)
  address  print the address of the running cluster

DIR (default \$SWEEP_CLUSTER_DIR or /tmp/sweep-cluster-\$UID) holds the nodes' sessions and logs;
keep it short: Ray's socket paths inside it must fit in 107 characters.
RAY selects the ray executable (default: the repo's .venv/bin/ray, else ray on PATH).
RAY_AUTH_MODE (default token) is Ray's token authentication; clients need the same value.
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${RAY:-}" ]; then
    RAY="$REPO/.venv/bin/ray"
    [ -x "$RAY" ] || RAY="$(command -v ray || true)"
fi
DIR="${SWEEP_CLUSTER_DIR:-/tmp/sweep-cluster-$(id -u)}"
WORKERS=2 GPUS=1 CPUS=1 PORT=

command="${1:-}"
[ $# -gt 0 ] && shift
while getopts "w:g:c:p:d:h" opt; do
    case "$opt" in
        w) WORKERS="$OPTARG" ;;
        g) GPUS="$OPTARG" ;;
        c) CPUS="$OPTARG" ;;
        p) PORT="$OPTARG" ;;
        d) DIR="$OPTARG" ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -gt 0 ]; then usage >&2; exit 2; fi
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac  # absolute: it is matched in Ray's command lines
DIR="${DIR%/}"
STATE="$DIR/address"

# This cluster's processes: those whose command line names DIR and Ray's package (raylet,
# gcs_server, monitors, dashboard), plus all their descendants (agents and workers rename
# themselves "ray::..." so only their parentage ties them to DIR).
cluster_pids() {
    [ -d "$DIR" ] || return 0
    ps -ww -eo pid=,ppid=,args= | CLUSTER_DIR="$DIR/" awk '
        { parent[$1] = $2; if (index($0, ENVIRON["CLUSTER_DIR"]) && $0 ~ /\/ray\//) mine[$1] = 1 }
        END {
            do { added = 0
                 for (p in parent) if (!(p in mine) && (parent[p] in mine)) { mine[p] = 1; added = 1 }
            } while (added)
            for (p in mine) print p
        }'
}

alive() {
    local pid left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    echo "${left[@]:-}"
}

# SIGTERM, then SIGKILL after a grace period, in `ray stop`'s order: raylets first (they end
# their workers and agents), then the rest, the GCS last.
stop_cluster() {
    local all pid raylets=() gcs=() rest=() group left
    all=$(cluster_pids)
    [ -z "$all" ] && { rm -f "$STATE"; echo "no cluster running in $DIR"; return 0; }
    for pid in $all; do
        case "$(ps -o comm= -p "$pid" 2>/dev/null || true)" in
            raylet) raylets+=("$pid") ;;
            gcs_server) gcs+=("$pid") ;;
            *) rest+=("$pid") ;;
        esac
    done
    for group in "${raylets[*]:-}" "${rest[*]:-}" "${gcs[*]:-}"; do  # pids: split on purpose
        [ -z "$group" ] && continue
        kill -TERM $group 2>/dev/null || true
        for _ in $(seq 50); do
                [ -z "$(alive $group)" ] && break
            sleep 0.1
        done
    done
    left=$(alive $all)
    [ -n "$left" ] && kill -KILL $left 2>/dev/null || true
    rm -f "$STATE"
    echo "stopped the cluster in $DIR ($(wc -w <<<"$all") processes)"
}

free_port() {
    local python="$(dirname "$RAY")/python" code='import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    [ -x "$python" ] || python=python3
    "$python" -c "$code"
}

start_cluster() {
    [ -n "$RAY" ] || { echo "$0: no ray executable (install the project or set RAY)" >&2; exit 1; }
    if [ -n "$(cluster_pids)" ]; then
        echo "$0: a cluster already runs in $DIR ($(cat "$STATE" 2>/dev/null)); stop it first" >&2
        exit 1
    fi
    mkdir -p "$DIR"
    rm -rf "$DIR"/session_* "$DIR/session_latest" "$DIR/ray_current_cluster"  # the last run's logs
    PORT="${PORT:-$(free_port)}"
    local address="127.0.0.1:$PORT" i log="$DIR/head.log"
    trap 'echo "$0: start failed ($log):" >&2; tail -n 20 "$log" >&2; stop_cluster >&2' ERR
    export RAY_USAGE_STATS_ENABLED=0
    # Ray's switch for multi-node clusters (off by default on macOS; `0` makes workers refuse to
    # join). With it on, Ray advertises this host's routable address even for 127.0.0.1.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
    # GCS and raylets listen on every interface, so the nodes and every client authenticate with
    # Ray's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, generated if missing).
    # A joining node or an explicit --address client only uses it when RAY_AUTH_MODE says so.
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    [ "$RAY_AUTH_MODE" = token ] && "$RAY" get-auth-token --generate >/dev/null 2>&1
    # Each node would claim 30% of the machine's memory for its object store: give each 512 MiB.
    local common=(--node-ip-address 127.0.0.1 --temp-dir "$DIR" --object-store-memory 536870912
                  --disable-usage-stats)
    "$RAY" start --head --port "$PORT" --include-dashboard false --num-cpus 0 --num-gpus 0 \
        "${common[@]}" >"$log" 2>&1
    for i in $(seq "$WORKERS"); do
        log="$DIR/worker-$i.log"
        "$RAY" start --address "$address" --num-cpus "$CPUS" --num-gpus "$GPUS" "${common[@]}" \
            >"$log" 2>&1
    done
    trap - ERR
    echo "$address" >"$STATE"
    echo "Ray cluster: 1 head + $WORKERS workers ($GPUS GPU, $CPUS CPU each), logs in $DIR"
    echo "run a sweep:  RAY_AUTH_MODE=$RAY_AUTH_MODE sweep run sweeps/quickstart.yaml --address $address"
    echo "tear down:    $0 stop -d $DIR"
}

case "$command" in
    start) start_cluster ;;
    stop) stop_cluster ;;
    address) [ -s "$STATE" ] && [ -n "$(cluster_pids)" ] && cat "$STATE" \
                 || { echo "$0: no cluster running in $DIR" >&2; exit 1; } ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
