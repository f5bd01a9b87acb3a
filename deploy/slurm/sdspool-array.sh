#!/usr/bin/env bash
# Renders a shared spool on a Slurm cluster: one array task per GPU, each running
# `sdspool run --until-idle` on its GPU over the same spool, so the tasks claim the queued jobs
# exactly once between them and each ends when the spool has nothing left for it.
#
#   sbatch --array=0-7 deploy/slurm/sdspool-array.sh            # 8 GPUs
#   SDSPOOL_CONFIG=/shared/sdspool/config.yaml sbatch --array=0-3 deploy/slurm/sdspool-array.sh
#
# The config's spool.dir and output_dir must be on a shared file system with the semantics of
# README "Deployment" (NFSv4, Lustre, GPFS, CephFS, ...); its execution.device_ids must be [0]:
# Slurm hands each task one GPU, which the task sees as device 0 (CUDA_VISIBLE_DEVICES).
#SBATCH --job-name=sdspool
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=sdspool-%A_%a.log
# SIGTERM 5 minutes before the time limit: the daemon stops taking jobs, lets running ones finish
# for daemon.grace_seconds, then checkpoints them and gives them back to the spool.
#SBATCH --signal=B:TERM@300
set -euo pipefail

SDSPOOL=${SDSPOOL:-sdspool}
CONFIG=${SDSPOOL_CONFIG:-$HOME/sdspool/config.yaml}

if [ ! -r "$CONFIG" ]; then
  echo "sdspool-array.sh: no config at $CONFIG (set SDSPOOL_CONFIG)" >&2
  exit 2
fi
echo "task ${SLURM_ARRAY_TASK_ID:-0} of job ${SLURM_ARRAY_JOB_ID:-none} on $(hostname), GPU ${CUDA_VISIBLE_DEVICES:-?}"

# Not exec: the batch shell receives --signal's TERM and passes it on to the daemon.
"$SDSPOOL" --config "$CONFIG" run --until-idle &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null' TERM INT
status=0
wait "$daemon" || status=$?
# A trapped signal interrupts the first wait; wait again for the daemon to finish its jobs.
if kill -0 "$daemon" 2>/dev/null; then
  wait "$daemon" || status=$?
fi
exit "$status"
