#!/usr/bin/env bash
# Everything kdjax checks and measures on a GPU, in one go (GPU time is scarce):
#   1. the GPU path is right: both feeds train alike, populations (also with their
#      own fold rows) equal separate runs, BatchNorm state, frozen parameters, the
#      online teacher, bfloat16, heads (float32 matmuls for the equality checks);
#   2. epoch time of the notebooks' students, host feed vs device feed vs PyTorch on the
#      same GPU (benchmarks.train_speed);
#   3. the main command on full MNIST in float32 and in bfloat16 (accuracy and
#      epoch time of mixed precision);
#   4. the long MNIST studies a CPU cannot afford (Hinton et al. 2015 with a
#      long-trained teacher; the TensorFlow notebook's teacher-assistant chain at full
#      length);
#   5. (hours; only when asked for, STEPS="5") the full-length CIFAR comparison of every
#      distillation method as RepDistiller trains it (every stage for AT/NST/VID, FitNets
#      on stage 2, the initialisation stages of AB/FSP/FT, CRD + KD), 3 seeds each, under
#      RepDistiller's protocol (240 epochs, SGD
#      0.05, momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 150/180/210, batch 64,
#      crops and flips, teacher online): the PyTorch KD tutorial's pair (also at its own
#      10-epoch Adam protocol) and resnet56 -> resnet20, on CIFAR-10 (CIFAR10_DIR) and on CIFAR-100
#      when CIFAR100_DIR names a copy; each run resumes where it stopped when re-run;
#   6. the Keras knowledge-distillation example on full MNIST, 3 students per arm.
#
#   benchmarks/gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]
#   CIFAR10_DIR=... [CIFAR100_DIR=...] STEPS="5" benchmarks/gpu_session.sh MNIST_DIR OUT_DIR
#
# SPEED_ARGS, MAIN_ARGS, HINTON_ARGS, TAKD_ARGS, CIFAR_ARGS and KERAS_ARGS replace each step's
# length flags (a dry run on a CPU: tiny values); CIFAR_TIMEOUT limits each CIFAR run (seconds,
# default 0: none); STEPS lists the steps to run (default "1 2 3 4 6").
set -u
speed_args=${SPEED_ARGS:---epochs=2}
main_args=${MAIN_ARGS:-}
hinton_args=${HINTON_ARGS:---teacher_epochs=300 --epochs=60}
takd_args=${TAKD_ARGS:---teacher_epochs=20 --epochs=20}
cifar_args=${CIFAR_ARGS:---seeds=3}
cifar_timeout=${CIFAR_TIMEOUT:-0}
keras_args=${KERAS_ARGS:-}
cifar10=${CIFAR10_DIR:-}
cifar100=${CIFAR100_DIR:-}
steps=${STEPS:-1 2 3 4 6}
mnist=${1:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
out=${2:?usage: gpu_session.sh MNIST_DIR OUT_DIR [PYTHON]}
py=${3:-python3}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Several processes share the GPU in step 4: allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
summary=$out/summary.log
stamp() { echo "[$(date +%T)] $*" | tee -a "$summary"; }
wants() { [[ " $steps " == *" $1 "* ]]; }
# A command's closing table and what follows it, else (it failed) its last lines.
report() {
  if grep -q '^run  ' "$1"; then
    grep -v '^[IW][0-9]' "$1" | sed -n '/^run  /,$p' | tee -a "$summary"
  else
    tail -n 5 "$1" | tee -a "$summary"
  fi
}

stamp "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c 'import sys, jax, flax, optax, orbax.checkpoint as o, torch
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax",
      optax.__version__, "orbax", o.__version__, "torch", torch.__version__)
print(jax.devices())'
} 2>&1 | tee -a "$summary"

if wants 1; then
  stamp "1. correctness on the GPU"
  JAX_DEFAULT_MATMUL_PRECISION=float32 timeout 180 "$py" -m pytest -q -p no:cacheprovider \
    -x tests/test_model_state.py tests/test_fold_populations.py tests/test_precision.py \
    tests/test_training.py -k "not every_registered" 2>&1 | tail -n 15 | tee -a "$summary"
fi

if wants 2; then
  stamp "2. speed: kdjax host / device feed and PyTorch"
  timeout 150 "$py" -m benchmarks.train_speed --feeds=host,device $speed_args \
    --data_dir="$mnist" --output="$out/train_speed.json" 2>&1 \
    | grep -v '^[IW][0-9]' | tail -n 12 | tee -a "$summary"
fi

if wants 3; then
  stamp "3. the main command on full MNIST, float32 and bfloat16"
  for dtype in float32 bfloat16; do
    timeout 75 "$py" -m experiments.mnist_kd --data_dir="$mnist" --compute_dtype=$dtype $main_args \
      --tensorboard=false --workdir=runs/gpu_$dtype >"$out/main_$dtype.log" 2>&1
    echo "main $dtype exit $?" >>"$out/main_$dtype.log"
    grep -E "epoch [0-9]+/|^(teacher|student)|exit" "$out/main_$dtype.log" | tail -n 14 \
      | tee -a "$summary"
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
  grep -v '^[IW][0-9]' "$out/hinton.log" | tail -n 12 | tee -a "$summary"
  grep -v '^[IW][0-9]' "$out/takd.log" | tail -n 12 | tee -a "$summary"
fi

if wants 5; then
  stamp "5. full-length CIFAR method comparisons (every method, RepDistiller's protocol)"
  sets=""
  [[ -n "$cifar10" ]] && sets="cifar10=$cifar10"
  [[ -n "$cifar100" ]] && sets="$sets cifar100=$cifar100"
  [[ -z "$sets" ]] && stamp "   skipped: set CIFAR10_DIR (and CIFAR100_DIR) to an image folder, .tar or TFDS dir"
  for set in $sets; do
    name=${set%%=*}
    for run in pytorch_tutorial:notebook pytorch_tutorial:repdistiller resnet56_resnet20:repdistiller; do
      preset=${run%%:*} protocol=${run#*:}
      log="$out/cifar_${name}_${preset}_${protocol}.log"
      timeout "$cifar_timeout" "$py" -m experiments.cifar10_kd --data_dir="${set#*=}" \
        --dataset=$name --preset=$preset --protocol=$protocol --method=compare $cifar_args \
        --checkpoint_every=10 --tensorboard=false \
        --workdir=runs/gpu_cifar_${name}_${preset}_${protocol} >"$log" 2>&1
      echo "cifar $name $preset $protocol exit $?" >>"$log"
      report "$log"
    done
  done
fi

if wants 6; then
  stamp "6. the Keras KD example on full MNIST (teacher online, 3 students per arm)"
  timeout 300 "$py" -m experiments.keras_mnist_kd --data_dir="$mnist" --seeds=3 $keras_args \
    --tensorboard=false --workdir=runs/gpu_keras >"$out/keras.log" 2>&1
  echo "keras exit $?" >>"$out/keras.log"
  report "$out/keras.log"
fi
stamp "done"
