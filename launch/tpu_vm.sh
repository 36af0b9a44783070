#!/usr/bin/env bash
# Train mnist-jax on a Cloud TPU VM or pod slice: create it, install the project on every worker,
# run on every worker, copy the workdir back, delete the TPU.
#
#   PROJECT=my-project ZONE=us-central2-b ACCELERATOR=v4-8 launch/tpu_vm.sh \
#       --config=configs/dnn.py
#
# Variables (all but PROJECT and ZONE have defaults):
#   PROJECT, ZONE         gcloud project and zone (required)
#   NAME                  TPU name (default mnist-jax-$USER)
#   ACCELERATOR           e.g. v4-8 (one host), v4-32 (a 4-host pod slice); default v4-8
#   VERSION               TPU VM software version (default tpu-ubuntu2204-base)
#   REMOTE_WORKDIR        workdir on the workers (default runs/tpu); for a pod slice put it on a
#                         bucket mounted on all workers (orbax checkpoints from every host)
#   LOCAL_WORKDIR         where to copy the results back (default runs/tpu-<NAME>)
#   KEEP=1                keep the TPU afterwards instead of deleting it
#   SPOT=1                create a spot (preemptible) TPU; rerunning this script resumes
# On a pod slice, jax.distributed.initialize() configures itself from the TPU environment.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}"
name=${NAME:-mnist-jax-${USER:-user}}
accelerator=${ACCELERATOR:-v4-8}
version=${VERSION:-tpu-ubuntu2204-base}
remote_workdir=${REMOTE_WORKDIR:-runs/tpu}
local_workdir=${LOCAL_WORKDIR:-runs/tpu-$name}
gc=(gcloud --project="$PROJECT" compute tpus tpu-vm)
repo=$(cd "$(dirname "$0")/.." && pwd)

if ! "${gc[@]}" describe "$name" --zone="$ZONE" >/dev/null 2>&1; then
  "${gc[@]}" create "$name" --zone="$ZONE" --accelerator-type="$accelerator" \
    --version="$version" ${SPOT:+--spot}
fi
cleanup() {
  if [ -z "${KEEP:-}" ]; then "${gc[@]}" delete "$name" --zone="$ZONE" --quiet; fi
}
trap cleanup EXIT

# Ship this checkout (not a remote clone: what runs is what you have) and install it.
tarball=$(mktemp --suffix=.tar.gz)
git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
"${gc[@]}" scp "$tarball" "$name":mnist-jax.tar.gz --zone="$ZONE" --worker=all
"${gc[@]}" ssh "$name" --zone="$ZONE" --worker=all --command="
  set -e; mkdir -p mnist-jax && tar -xzf mnist-jax.tar.gz -C mnist-jax && cd mnist-jax &&
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"

# Run on every worker at once; each process joins the same jax.distributed job.
args=$(printf '%q ' "$@")
"${gc[@]}" ssh "$name" --zone="$ZONE" --worker=all --command="
  cd mnist-jax && .venv/bin/python -m mnist_jax.main --workdir=$remote_workdir $args"

mkdir -p "$local_workdir"
"${gc[@]}" scp --recurse "$name":mnist-jax/"$remote_workdir"/. "$local_workdir" --zone="$ZONE" --worker=0
echo "results in $local_workdir"
