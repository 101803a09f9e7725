#!/usr/bin/env bash
# Train on a multi-host Cloud TPU VM slice: the same command on every worker, over gcloud ssh.
# JAX finds the pod's coordinator, process count and index itself (jax.distributed on TPU).
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a WORKDIR=/mnt/shared/runs/hsr59 \
#     launch/tpu_pod.sh --config configs/hsr_msnet_coco.py --config.data.root=/mnt/shared/coco
#   DRY_RUN=1 TPU_NAME=... ZONE=... WORKDIR=... launch/tpu_pod.sh --config ...
#
# Environment:
#   TPU_NAME, ZONE   the TPU VM slice (gcloud compute tpus tpu-vm list)
#   WORKDIR          run directory on a filesystem every worker mounts at the same path
#                    (Filestore/NFS or a GCS FUSE mount): checkpoints are written by all hosts
#   PROJECT_DIR      where jaxpose is checked out and installed on the workers (default ~/jaxpose)
#   PROJECT          gcloud project (default: gcloud's configured one)
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM slice name}"
: "${ZONE:?set ZONE to the slice zone}"
: "${WORKDIR:?set WORKDIR to a directory every worker shares}"
project_dir="${PROJECT_DIR:-~/jaxpose}"

flags=""
for arg in "$@"; do
  flags+=" $(printf '%q' "$arg")"
done
remote="cd ${project_dir} && python3 -m jaxpose.launch --workdir $(printf '%q' "$WORKDIR")${flags}"
command=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$remote")
if [[ -n "${PROJECT:-}" ]]; then
  command+=(--project "$PROJECT")
fi
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${command[@]}"
  printf '\n'
  exit 0
fi
exec "${command[@]}"
