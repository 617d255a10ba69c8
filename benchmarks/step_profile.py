"""Where a CPU training step's time goes, op by op: kdjax's compiled step beside
PyTorch's eager step of the same network.

    python -m benchmarks.step_profile                      # the train_speed networks
    python -m benchmarks.step_profile --models=two_conv_net --steps=40
    python -m benchmarks.step_profile --models=mlp_200 --members=6 --population_strategy=vmap

For each network (the students and the CIFAR teacher of ``benchmarks.train_speed``, at
their batch sizes) it builds a CE + Adam step on random data and:

- runs ``--steps`` steps as one ``lax.scan`` over the data on the device, as kdjax's
  device feed does, times it, profiles it with ``jax.profiler`` and adds up the time
  of every XLA operation by the layer and pass that produced it (read from the
  compiled program's metadata: ``conv2 backward``, ``fc1 forward``, ``optimizer``, ...)
  and by the operation's kind (``dot_general``, ``slice_bitcast_fusion``, ...);
- runs the same number of steps of the ``torch.nn`` twin eagerly, times it and adds
  up ``torch.profiler``'s self time by ATen operation.

With ``--members=N`` it profiles instead a population of N students trained together
on the same batches (``--population_strategy``, as ``fit`` does), beside one student,
and reports the population's step as a multiple of one student's.

XLA runs operations of one step concurrently on both cores, so its per-operation
times add up to more than the step's wall time. Prints both breakdowns and writes
JSON (``--output``), with each step's FLOPs (3× XLA's count of the forward pass) as a
share of this machine's float32 matrix-product rate.
"""

from __future__ import annotations

import json

import jax
from absl import app, flags

from benchmarks import profiling
from benchmarks.networks import STUDENTS
from kdjax.training.step import STRATEGIES

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "models",
    ["small_conv_net", "two_conv_net", "four_conv_net", "mlp_200"],
    "Networks to profile (benchmarks.networks.STUDENTS).",
)
flags.DEFINE_integer("steps", 30, "Steps per timed and profiled run (the teacher: a third).")
flags.DEFINE_integer(
    "members", 0, "Profile a population of this many students beside one student (0: off)."
)
flags.register_validator("members", lambda n: n >= 0, message="--members must be >= 0")
flags.DEFINE_enum(
    "population_strategy",
    "auto",
    ["auto", *STRATEGIES],
    "How the population trains its students together (kdjax.training.over_members).",
)
flags.DEFINE_integer("top", 12, "Rows of each breakdown to print.")
flags.DEFINE_string("output", "benchmarks/step_profile.json", "Where to write the results.")


def _print_top(title: str, table: dict[str, float]) -> None:
    print(f"  {title}")
    for key, ms in list(table.items())[: FLAGS.top]:
        print(f"    {ms:9.2f} ms  {key}")


def _profile_population(row: dict, name: str, steps: int) -> None:
    members, strategy = FLAGS.members, FLAGS.population_strategy
    population = profiling.profile_jax(name, steps, members, strategy)
    row["population"] = {"members": members, "strategy": strategy, **population}
    ratio = population["step_ms"] / row["kdjax"]["step_ms"]
    row["population"]["over_one_student"] = round(ratio, 2)
    for label, profile in (("one student", row["kdjax"]), (f"{members} students", population)):
        print(
            f"  {label}: step {profile['step_ms']} ms (operations add up to "
            f"{profile['op_ms_sum']} ms)"
        )
        _print_top("by layer and pass", profile["by_layer"])
        _print_top("by operation kind", profile["by_kind"])
    print(f"  {members} students ({strategy}) cost {ratio:.2f}× one student")


def main(argv):
    del argv
    unknown = set(FLAGS.models) - set(STUDENTS)
    if unknown:
        raise app.UsageError(f"--models: unknown {sorted(unknown)}; known: {sorted(STUDENTS)}")
    matmul = profiling.matmul_gflops()
    print(f"float32 matrix product 2048³: {matmul:.0f} GFLOP/s")
    rows = {}
    for name in FLAGS.models:
        steps = max(FLAGS.steps // 3, 3) if name == "four_conv_net" else FLAGS.steps
        print(f"{name}: {steps} steps ...", flush=True)
        row = {"steps": steps, "step_gflop": round(profiling.step_gflop(name), 3)}
        row["kdjax"] = profiling.profile_jax(name, steps)
        if FLAGS.members:
            _profile_population(row, name, steps)
            rows[name] = row
            continue
        try:
            row["torch"] = profiling.profile_torch(name, steps)
        except ImportError:
            print("  PyTorch not installed: its profile is skipped.")
        rows[name] = row
        kdjax = row["kdjax"]
        for side in ("kdjax", "torch"):
            if side in row:
                rate = row["step_gflop"] / row[side]["step_ms"] * 1e3
                row[side]["share_of_matmul_rate"] = round(rate / matmul, 3)
        print(
            f"  kdjax step {kdjax['step_ms']} ms ({kdjax['share_of_matmul_rate']:.0%} of the "
            f"matmul rate; operations add up to {kdjax['op_ms_sum']} ms)"
        )
        _print_top("kdjax by layer and pass", kdjax["by_layer"])
        _print_top("kdjax by operation kind", kdjax["by_kind"])
        if "torch" in row:
            torch_row = row["torch"]
            print(
                f"  PyTorch step {torch_row['step_ms']} ms "
                f"({torch_row['share_of_matmul_rate']:.0%} of the matmul rate)"
            )
            _print_top("PyTorch by ATen operation (self time)", row["torch"]["by_op"])
    report = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "matmul_gflops_per_s": round(matmul, 1),
        "models": rows,
    }
    with open(FLAGS.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"Written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
