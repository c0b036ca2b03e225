#!/usr/bin/env bash
# SEAM on a Cloud TPU VM pod slice (e.g. v4-32, v5p-64): the same command on every worker,
# one process per host, started from your workstation with gcloud.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh [CONFIG] [--config.FIELD=VALUE ...]
#   TPU_NAME=my-v4-32 ZONE=us-central2-b SETUP=1 bash launch/tpu_pod.sh configs/llama2_7b_chat.py \
#       --config.data.harmful=PATH/beavertails_with_refusals_train.json \
#       --config.run_dir=gs://my-bucket/runs/llama2_7b_chat
#
# Runs on all workers:
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
#       --command="cd $REPO_DIR && python -m seam_jax.main --config=CONFIG ..."
# SETUP=1 first installs the checkout at REPO_DIR (default ~/seam_jax, which must exist on
# every worker, e.g. cloned by a startup script) with JAX for TPU and the gs:// backends
# (the gcs extra: gcsfs and google-cloud-storage). distributed.mode=on makes every worker
# call jax.distributed.initialize(), which finds the pod's workers from the TPU metadata.
# Every worker writes its shards of each checkpoint, so run_dir must be a location all
# workers share: a gs://bucket/path URL (checkpoints through Orbax's GCS driver, the rest
# through etils.epath: seam_jax/storage.py; the workers' service account needs write
# access to the bucket), or a shared mount (Filestore/NFS, gcsfuse) given as a local path.
# In a bucket the run directory's lock is skipped with one warning line: start one run per
# run_dir. PROJECT sets --project. CONFIG defaults to configs/llama2_7b_chat.py.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
REPO_DIR="${REPO_DIR:-~/seam_jax}"
CONFIG="${1:-configs/llama2_7b_chat.py}"
shift || true
EXTRA=""
if (($#)); then EXTRA=$(printf ' %q' "$@"); fi
GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then GCLOUD+=(--project="$PROJECT"); fi

if [[ "${SETUP:-0}" == 1 ]]; then
  "${GCLOUD[@]}" --command="cd $REPO_DIR && pip install -e '.[gcs]' 'jax[tpu]'"
fi
"${GCLOUD[@]}" --command="cd $REPO_DIR && python -m seam_jax.main --config=$CONFIG \
--config.distributed.mode=on$EXTRA"
