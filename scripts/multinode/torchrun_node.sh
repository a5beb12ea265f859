#!/usr/bin/env bash
# One node of a multi-node mmtrain job launched with torchrun. Run it on every node with the same
# MASTER_ADDR (a node every other can reach), NNODES and RUN_DIR (a folder all nodes share), and this
# node's NODE_RANK (0 .. NNODES-1); GPUS processes start on each node, one per GPU.
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 GPUS=8 RUN_DIR=/shared/runs/exp1 \
#     bash scripts/multinode/torchrun_node.sh experiment=align_image_text
# Extra arguments are mmtrain overrides. Tested on one machine as 2 nodes x 1 process on 127.0.0.1
# (tests/integration/test_ddp.py): the same run, bit for bit, as 1 node x 2 processes.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR}" "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${RUN_DIR:?set RUN_DIR}"
GPUS="${GPUS:-1}"
exec .venv/bin/python -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$GPUS" --node-rank="$NODE_RANK" \
  --master-addr="$MASTER_ADDR" --master-port="${MASTER_PORT:-29500}" \
  -m mmtrain train trainer=ddp trainer.devices="$GPUS" trainer.num_nodes="$NNODES" run_dir="$RUN_DIR" "$@"
