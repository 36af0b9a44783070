#!/usr/bin/env bash
# N processes of mnist-jax on this machine over 127.0.0.1 (jax.distributed), for testing the
# multi-host path without a cluster. Each process gets DEVICES_PER_PROCESS CPU devices.
#
#   launch/local_multiprocess.sh NUM_PROCESSES WORKDIR [main.py flags...]
#   e.g. launch/local_multiprocess.sh 2 runs/mp --config=configs/dnn.py --config.num_steps=2000
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
num_processes=$1; workdir=$2; shift 2
positive() {  # NAME VALUE: a whole number >= 1, else one error line and exit 1.
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$((10#$2))" -lt 1 ]; then
    echo "error: $1=$2: expected a whole number >= 1" >&2
    exit 1
  fi
}
positive NUM_PROCESSES "$num_processes"
positive DEVICES_PER_PROCESS "${DEVICES_PER_PROCESS:-2}"
positive INIT_TIMEOUT "${INIT_TIMEOUT:-120}"
if [ -n "${PORT:-}" ]; then positive PORT "$PORT"; fi
num_processes=$((10#$num_processes))
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-2}
python=${PYTHON:-python3}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for ((i = 0; i < num_processes; i++)); do
  "$python" -m mnist_jax.main --workdir="$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num_processes" --process_id="$i" \
    --initialization_timeout="${INIT_TIMEOUT:-120}" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
exit "$status"
