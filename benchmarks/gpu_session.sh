#!/usr/bin/env bash
# Everything kdjax checks and measures on a GPU, in one go (GPU time is scarce):
#   1. the GPU path is right: both feeds train alike, populations (also with their
#      own fold rows) equal separate runs, BatchNorm state, frozen parameters, the
#      online teacher, bfloat16, heads (float32 matmuls for the equality checks);
#   2. epoch time of the seed students, host feed vs device feed vs PyTorch on the
#      same GPU (benchmarks.train_speed);
#   3. the main command on full MNIST in float32 and in bfloat16 (accuracy and
#      epoch time of mixed precision);
#   4. the long MNIST studies a CPU cannot afford (Hinton et al. 2015 with a
#      long-trained teacher; seed 003's teacher-assistant chain at full length).
#
#   benchmarks/gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]
#
# SPEED_ARGS, MAIN_ARGS, HINTON_ARGS and TAKD_ARGS replace each step's length flags (a dry run
# on a CPU: tiny values); STEPS lists the steps to run (default "1 2 3 4").
set -u
speed_args=${SPEED_ARGS:---epochs=2}
main_args=${MAIN_ARGS:-}
hinton_args=${HINTON_ARGS:---teacher_epochs=300 --epochs=60}
takd_args=${TAKD_ARGS:---teacher_epochs=20 --epochs=20}
steps=${STEPS:-1 2 3 4}
mnist=${1:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
out=${2:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
py=${3:-python3}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Several processes share the GPU in step 4: allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
session=$out/session.log
stamp() { echo "[$(date +%T)] $*" | tee -a "$session"; }
wants() { [[ " $steps " == *" $1 "* ]]; }

stamp "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c 'import sys, jax, flax, optax, orbax.checkpoint as o, torch
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax",
      optax.__version__, "orbax", o.__version__, "torch", torch.__version__)
print(jax.devices())'
} 2>&1 | tee -a "$session"

if wants 1; then
  stamp "1. correctness on the GPU"
  JAX_DEFAULT_MATMUL_PRECISION=float32 timeout 180 "$py" -m pytest -q -p no:cacheprovider \
    -x tests/test_model_state.py tests/test_fold_populations.py tests/test_precision.py \
    tests/test_training.py -k "not every_registered" 2>&1 | tail -n 15 | tee -a "$session"
fi

if wants 2; then
  stamp "2. speed: kdjax host / device feed and PyTorch"
  timeout 150 "$py" -m benchmarks.train_speed --feeds=host,device $speed_args \
    --data_dir="$mnist" --output="$out/train_speed.json" 2>&1 \
    | grep -v '^[IW][0-9]' | tail -n 12 | tee -a "$session"
fi

if wants 3; then
  stamp "3. the main command on full MNIST, float32 and bfloat16"
  for dtype in float32 bfloat16; do
    timeout 75 "$py" -m experiments.mnist_kd --data_dir="$mnist" --compute_dtype=$dtype $main_args \
      --tensorboard=false --workdir=runs/gpu_$dtype >"$out/main_$dtype.log" 2>&1
    echo "main $dtype exit $?" >>"$out/main_$dtype.log"
    grep -E "epoch [0-9]+/|^(teacher|student)|exit" "$out/main_$dtype.log" | tail -n 14 \
      | tee -a "$session"
  done
fi

if wants 4; then
  stamp "4. long MNIST studies"
  (
    timeout 150 "$py" -m experiments.hinton_mnist --data_dir="$mnist" --seeds=3 \
      $hinton_args --checkpoint_every=50 --tensorboard=false --workdir=runs/gpu_hinton \
      >"$out/hinton.log" 2>&1
    echo "hinton exit $?" >>"$out/hinton.log"
  ) &
  (
    timeout 150 "$py" -m experiments.mnist_takd --data_dir="$mnist" --seeds=3 $takd_args \
      --tensorboard=false --workdir=runs/gpu_takd >"$out/takd.log" 2>&1
    echo "takd exit $?" >>"$out/takd.log"
  ) &
  wait
  grep -v '^[IW][0-9]' "$out/hinton.log" | tail -n 12 | tee -a "$session"
  grep -v '^[IW][0-9]' "$out/takd.log" | tail -n 12 | tee -a "$session"
fi
stamp "done"
