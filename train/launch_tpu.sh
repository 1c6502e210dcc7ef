#!/usr/bin/env bash
# Runs `lmjax train` on every worker of a Cloud TPU VM slice: the same command on all of them,
# which join one job by themselves (lmjax reads TPU_WORKER_HOSTNAMES; see train/README.md).
#
#   train/launch_tpu.sh TPU_NAME ZONE CONFIG RUN_DIR [--set key=value ...]
#   DRY_RUN=1 train/launch_tpu.sh ...     # print what it would run, run nothing
#
# RUN_DIR must be storage every worker sees at the same path (a gcsfuse mount of a bucket, or
# Filestore). The repository is expected at ~/lmjax on each worker (LMJAX_DIR to change it),
# installed with `pip install "jax[tpu]" -e .`. Output goes to ~/lmjax-train.log on each worker;
# rerunning the same command resumes from the latest checkpoint.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 run_dir=$4
shift 4
repo=${LMJAX_DIR:-lmjax}
train="cd $repo && nohup python train/train.py $(printf '%q ' "$config") --run-dir $(printf '%q' "$run_dir")"
if [[ $# -gt 0 ]]; then
  train+=" $(printf '%q ' "$@")"
fi
train+=" > ~/lmjax-train.log 2>&1 &"
command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$train")
echo "on every worker of $tpu ($zone):" >&2
echo "  $train" >&2
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
"${command[@]}"
echo "started; follow it with: gcloud compute tpus tpu-vm ssh $tpu --zone=$zone --worker=0 --command='tail -f ~/lmjax-train.log'" >&2
