#!/usr/bin/env bash
# Everything kdjax checks and measures on a GPU, in one go (GPU time is scarce):
#   1. the GPU path is right: the device feed trains exactly like the host feed,
#      and a vmapped population equals separate runs (float32 matmuls for the check);
#   2. epoch time of the seed students, host feed vs device feed vs PyTorch on the
#      same GPU (benchmarks.train_speed);
#   3. the long MNIST studies that a CPU cannot afford: Hinton et al. 2015 with a
#      long-trained teacher (and its jittered-transfer-set variant), and seed
#      003's teacher-assistant chain at full length
#      (run side by side: their wall times are not speed figures).
#
#   benchmarks/gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]
#
# SPEED_ARGS, HINTON_ARGS, TAKD_ARGS and TAKD_LONG_ARGS replace each step's
# length flags (a dry run on a CPU: tiny values).
set -u
speed_args=${SPEED_ARGS:---epochs=2}
hinton_args=${HINTON_ARGS:---teacher_epochs=300 --epochs=60}
takd_args=${TAKD_ARGS:-}
takd_long_args=${TAKD_LONG_ARGS:---teacher_epochs=20 --epochs=20}
mnist=${1:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
out=${2:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
py=${3:-python3}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Several processes share the GPU in step 3: allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
session=$out/session.log
stamp() { echo "[$(date +%T)] $*" | tee -a "$session"; }

stamp "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c 'import sys, jax, flax, optax, orbax.checkpoint as o, chex, torch
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax",
      optax.__version__, "orbax", o.__version__, "torch", torch.__version__)
print(jax.devices())'
} 2>&1 | tee -a "$session"

stamp "1. correctness on the GPU"
JAX_DEFAULT_MATMUL_PRECISION=float32 timeout 120 "$py" -m pytest -q -p no:cacheprovider \
  tests/test_training.py -k "trains_exactly_like or population_equals_separate" 2>&1 \
  | tail -n 15 | tee -a "$session"

stamp "2. speed: kdjax host / device feed and PyTorch"
timeout 210 "$py" -m benchmarks.train_speed --feeds=host,device $speed_args \
  --data_dir="$mnist" --output="$out/train_speed.json" 2>&1 \
  | grep -v '^[IW][0-9]' | tail -n 12 | tee -a "$session"

stamp "3. long MNIST studies"
(
  timeout 300 "$py" -m experiments.hinton_mnist --data_dir="$mnist" --seeds=3 \
    $hinton_args --checkpoint_every=50 --workdir=runs/gpu_hinton \
    >"$out/hinton.log" 2>&1
  echo "hinton exit $?" >>"$out/hinton.log"
  # The jittered-transfer-set variant, reusing the teacher.
  timeout 150 "$py" -m experiments.hinton_mnist --data_dir="$mnist" --seeds=3 \
    $hinton_args --student_translate_pixels=2 --checkpoint_every=50 \
    --workdir=runs/gpu_hinton >>"$out/hinton.log" 2>&1
  echo "hinton jittered exit $?" >>"$out/hinton.log"
) &
(
  timeout 180 "$py" -m experiments.mnist_takd --data_dir="$mnist" --seeds=3 $takd_args \
    --workdir=runs/gpu_takd >"$out/takd.log" 2>&1
  echo "takd exit $?" >>"$out/takd.log"
  timeout 110 "$py" -m experiments.mnist_takd --data_dir="$mnist" --seeds=3 \
    $takd_long_args --workdir=runs/gpu_takd20 >>"$out/takd.log" 2>&1
  echo "takd20 exit $?" >>"$out/takd.log"
) &
wait
tar -czf "$out/studies.tar.gz" --exclude=checkpoints --exclude='*.npz' \
  runs/gpu_hinton runs/gpu_takd runs/gpu_takd20 2>/dev/null
grep -v '^[IW][0-9]' "$out/hinton.log" | tail -n 30 | tee -a "$session"
grep -v '^[IW][0-9]' "$out/takd.log" | tail -n 14 | tee -a "$session"
stamp "done"
