#!/usr/bin/env bash
# SEAM on one host: one process drives every local device (GPUs, TPU chips, or the CPU).
#
#   bash launch/single_host.sh [CONFIG] [--config.FIELD=VALUE ...]
#   bash launch/single_host.sh configs/llama2_7b_chat.py \
#       --config.data.harmful=PATH/beavertails_with_refusals_train.json
#   bash launch/single_host.sh configs/debug.py          # a 2-layer smoke run, any machine
#
# CONFIG defaults to configs/llama2_7b_chat.py. The mesh comes from the config (c.mesh:
# data=1, fsdp=-1 = all local devices, tensor=1); check that the step fits first with
#   python -m seam_jax.main --config=configs/plan.py:llama2-7b
# XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 lets JAX take 90% of each GPU (its default is 75%);
# the plan's c.plan.usable_fraction assumes the same.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/llama2_7b_chat.py}"
shift || true
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec python -m seam_jax.main --config="$CONFIG" --config.distributed.mode=off "$@"
