"""Training-epoch time of the MHIST backbones, kdjax against PyTorch eager, one process each.

    python -m benchmarks.backbone_speed                      # 224×224 and 32×32, batch 32
    python -m benchmarks.backbone_speed --sizes=32 --steps=3 --output=speed.json
    python -m benchmarks.backbone_speed --sizes=32 --steps=10 --repeats=2  # alternated

For MobileNetV2 (head trained, base frozen: the TensorFlow notebook's student) and
ResNet50V2 (the notebook's split: ``conv5_block3_3_conv``, ``post_bn`` and the head
trained) at each
``--sizes``, it times ``--steps`` training steps (after one warm-up step, compile
excluded) of

- kdjax: the core's train step (``make_train_step`` with ``make_optimizer(frozen=...)``
  from the same layer selection, BatchNorm of frozen layers in inference mode), jitted;
- PyTorch eager: the same networks in plain ``torch.nn`` (:mod:`benchmarks.torch_backbones`,
  parameter counts asserted equal), frozen parameters ``requires_grad=False``, frozen
  BatchNorm layers in ``eval()``, Adam over the trainable parameters;

each in its own process, same batch size and random uint8 images scaled by
``x/127.5 − 1`` inside the step. An epoch is MHIST's 2,175 training images: the step
time × ``2175 // batch`` (extrapolated from ``--steps`` steps; say so when quoting).
TFLOP/s use XLA's FLOP count of kdjax's compiled train step for both frameworks (the
same arithmetic), against the machine's float32 matmul rate measured here.

It also measures the stored-feature alternative for the head-only student without
augmentation: the frozen base's features computed once (an inference pass over the
training set), then epochs of the head alone on them; the gain over 25 epochs of
full steps is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["224", "32"], "Square input sizes.")
flags.DEFINE_integer("batch_size", 32, "Batch size of every measurement (TensorFlow notebook: 32).")
flags.DEFINE_integer("steps", 3, "Timed steps per measurement (after one warm-up step).")
flags.DEFINE_integer("repeats", 1, "Alternated runs of each framework; the fastest is kept.")
flags.DEFINE_integer("train_examples", 2175, "Examples per epoch (MHIST's training set).")
flags.DEFINE_integer("epochs", 25, "Epochs for the stored-feature gain (TensorFlow notebook: 25).")
flags.DEFINE_enum("framework", "both", ["both", "jax", "torch"], "Which side(s) to time.")
flags.DEFINE_string("output", "runs/backbone_speed.json", "Where to write the JSON results.")
flags.DEFINE_string("jax_results", None, "(For the PyTorch process) kdjax's results, whose "
                    "parameter counts the PyTorch networks must match.")  # fmt: skip

# name -> (backbone, trainable layer patterns): the TensorFlow notebook's two
# frozen/trainable splits,
# and every layer trained (the student from scratch, pretraining).
CASES = {
    "mobilenetv2_head": ("mobilenetv2", ("head",)),
    "resnet50v2_notebook_split": ("resnet50v2", ("conv5_block3_3_conv", "post_bn", "head")),
    "mobilenetv2_all": ("mobilenetv2", ("*",)),
    "resnet50v2_all": ("resnet50v2", ("*",)),
}
MATMUL_SIZE = 2048
flags.DEFINE_list("cases", ["mobilenetv2_head", "resnet50v2_notebook_split"],
                  f"Which networks and splits: {', '.join(CASES)}.")  # fmt: skip
flags.register_validator("cases", lambda names: set(names) <= set(CASES),
                         message=f"--cases must name cases among {', '.join(CASES)}")  # fmt: skip


def _timed(function, steps: int) -> float:
    """Seconds per call of ``function`` (which must block), after one warm-up call."""
    function()
    started = time.perf_counter()
    for _ in range(steps):
        function()
    return (time.perf_counter() - started) / steps


def _images(size: int, batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def jax_measurements(sizes, batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from kdjax.distill.objectives import get_objective, make_hyperparams
    from kdjax.models.backbones import backbone, keras_preprocess
    from kdjax.models.freezing import count_trainable, frozen_patterns
    from kdjax.training import create_state, make_optimizer, make_train_step, trainable_mask

    matrix = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    seconds = _timed(lambda: matmul(matrix).block_until_ready(), 5)
    results = {"matmul_gflops": 2 * MATMUL_SIZE**3 / seconds / 1e9, "cases": {}}
    hyperparams = make_hyperparams(learning_rate=1e-3)
    for size in sizes:
        images = _images(size, batch)
        batch_arrays = {"images": jnp.asarray(images), "labels": jnp.arange(batch) % 2,
                        "ids": jnp.arange(batch)}  # fmt: skip
        for case in FLAGS.cases:
            name, trainable = CASES[case]
            model = backbone(name, num_classes=2, trainable=trainable)
            optimizer = make_optimizer("adam", frozen=frozen_patterns(trainable))
            state = create_state(model, optimizer, keras_preprocess(images[:1]), seed=0)
            # As the command's loop builds it: frozen parameters pass through the step.
            mask = trainable_mask(state.params, frozen_patterns(trainable))
            step = make_train_step(
                model, get_objective("ce"), optimizer, keras_preprocess, trainable=mask
            )
            started = time.perf_counter()
            compiled = jax.jit(step).lower(state, batch_arrays, hyperparams, {}).compile()
            compile_seconds = time.perf_counter() - started
            analysis = compiled.cost_analysis()
            flops = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
            holder = {"state": state}

            def one_step(compiled=compiled, holder=holder, batch_arrays=batch_arrays):
                holder["state"], metrics = compiled(holder["state"], batch_arrays, hyperparams, {})
                metrics["loss"].block_until_ready()

            record = {
                "step_seconds": _timed(one_step, steps),
                "compile_seconds": compile_seconds,
                "train_step_flops": float(flops),
                "trainable_parameters": count_trainable(state.params, trainable),
                "parameters": sum(x.size for x in jax.tree_util.tree_leaves(
                    {"params": state.params, **state.model_state})),
            }  # fmt: skip
            if case == "mobilenetv2_head":
                record["stored_features"] = _stored_features(
                    model, state, images, batch, steps, optax
                )
            results["cases"][f"{case}@{size}"] = record
    return results


def _stored_features(model, state, images, batch: int, steps: int, optax) -> dict:
    """The head-only student on precomputed features: the feature pass's seconds per
    image and the head step's seconds (same batch size)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from kdjax.models.backbones import keras_preprocess

    variables = {"params": state.params, **state.model_state}
    forward = jax.jit(lambda v, x: model.apply(v, keras_preprocess(x))["features"])
    features = forward(variables, images)
    per_image = _timed(lambda: forward(variables, images).block_until_ready(), steps) / batch

    head = nn.Dense(2)
    head_params = {"params": state.params["head"]}
    tx = optax.adam(1e-3)
    opt_state = tx.init(head_params)
    labels = jnp.arange(batch) % 2

    @jax.jit
    def head_step(params, opt_state, features):
        def loss(params):
            logits = head.apply(params, features)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    holder = {"params": head_params, "opt": opt_state}

    def one_step():
        holder["params"], holder["opt"] = head_step(holder["params"], holder["opt"], features)
        jax.block_until_ready(holder["params"])

    return {"feature_seconds_per_image": per_image, "head_step_seconds": _timed(one_step, 20)}


def torch_measurements(sizes, batch: int, steps: int, expected: dict) -> dict:
    import torch
    import torch.nn.functional as F  # noqa: N812

    from benchmarks.torch_backbones import NETWORKS, keras_parameter_count
    from kdjax.models.freezing import LayerSelection

    matrix = torch.ones(MATMUL_SIZE, MATMUL_SIZE)
    seconds = _timed(lambda: matrix @ matrix, 5)
    results = {"matmul_gflops": 2 * MATMUL_SIZE**3 / seconds / 1e9, "cases": {},
               "threads": torch.get_num_threads()}  # fmt: skip
    for size in sizes:
        pixels = torch.from_numpy(_images(size, batch)).permute(0, 3, 1, 2).contiguous()
        labels = torch.arange(batch) % 2
        for case in FLAGS.cases:
            name, trainable = CASES[case]
            torch.manual_seed(0)
            model = NETWORKS[name](num_classes=2)
            key = f"{case}@{size}"
            if key in expected:
                assert keras_parameter_count(model) == expected[key], (key, "parameter count")
            frozen_norms = []
            for layer_name, module in model.layers.items():
                keep = LayerSelection(trainable).contains(layer_name)
                module.requires_grad_(keep)
                if not keep and isinstance(module, torch.nn.BatchNorm2d):
                    frozen_norms.append(module)
            parameters = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(parameters, lr=1e-3)
            model.train()
            for module in frozen_norms:
                module.eval()

            def one_step(model=model, optimizer=optimizer, pixels=pixels, labels=labels):
                optimizer.zero_grad(set_to_none=True)
                inputs = pixels.float() / 127.5 - 1.0
                loss = F.cross_entropy(model(inputs), labels)
                loss.backward()
                optimizer.step()

            results["cases"][key] = {
                "step_seconds": _timed(one_step, steps),
                "trainable_parameters": sum(p.numel() for p in parameters),
            }
    return results


def _child(framework: str, *extra: str) -> dict:
    """Runs one framework's measurements in a fresh process; returns its JSON."""
    output = Path(FLAGS.output).with_suffix(f".{framework}.json")
    arguments = [sys.executable, "-m", "benchmarks.backbone_speed", f"--framework={framework}",
                 f"--sizes={','.join(FLAGS.sizes)}", f"--batch_size={FLAGS.batch_size}",
                 f"--steps={FLAGS.steps}", f"--output={output}",
                 f"--cases={','.join(FLAGS.cases)}", *extra]  # fmt: skip
    subprocess.run(arguments, check=True, env=os.environ)
    return json.loads(output.read_text())


def _fastest(repeats: list[dict]) -> dict:
    """The first repeat's results with each case's fastest step of all repeats (the
    step times of every repeat kept as ``step_seconds_each``) and the fastest matmul."""
    fastest = json.loads(json.dumps(repeats[0]))
    fastest["matmul_gflops"] = max(run["matmul_gflops"] for run in repeats)
    for key, case in fastest["cases"].items():
        case["step_seconds_each"] = [run["cases"][key]["step_seconds"] for run in repeats]
        case["step_seconds"] = min(case["step_seconds_each"])
    return fastest


def summarise(jax_results: dict, torch_results: dict) -> list[dict]:
    """One row per case: epoch seconds of both, their ratio and TFLOP/s."""
    steps = FLAGS.train_examples // FLAGS.batch_size
    peak = max(jax_results["matmul_gflops"], torch_results["matmul_gflops"]) / 1e3
    rows = []
    for key, mine in jax_results["cases"].items():
        theirs = torch_results["cases"][key]
        row = {
            "case": key,
            "kdjax_epoch_seconds": mine["step_seconds"] * steps,
            "torch_epoch_seconds": theirs["step_seconds"] * steps,
            "kdjax_over_torch": mine["step_seconds"] / theirs["step_seconds"],
            "kdjax_tflops": mine["train_step_flops"] / mine["step_seconds"] / 1e12,
            "torch_tflops": mine["train_step_flops"] / theirs["step_seconds"] / 1e12,
            "matmul_peak_tflops": peak,
        }
        stored = mine.get("stored_features")
        if stored:
            full = FLAGS.epochs * row["kdjax_epoch_seconds"]
            cached = (stored["feature_seconds_per_image"] * FLAGS.train_examples
                      + FLAGS.epochs * stored["head_step_seconds"] * steps)  # fmt: skip
            row.update(stored_features_seconds=cached, full_steps_seconds=full,
                       stored_features_gain=full / cached)  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    del argv
    sizes = [int(size) for size in FLAGS.sizes]
    output = Path(FLAGS.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if FLAGS.framework == "jax":
        output.write_text(json.dumps(jax_measurements(sizes, FLAGS.batch_size, FLAGS.steps)))
        return
    if FLAGS.framework == "torch":
        expected = json.loads(Path(FLAGS.jax_results).read_text())
        counts = {key: case["parameters"] for key, case in expected["cases"].items()}
        output.write_text(
            json.dumps(torch_measurements(sizes, FLAGS.batch_size, FLAGS.steps, counts))
        )
        return
    # The two frameworks alternate, --repeats times each, and each case keeps its
    # fastest repeat: the load of a shared machine drifts over minutes, and one pass
    # of each, one after the other, measured ratios 2× apart on the same code.
    runs = {"jax": [], "torch": []}
    jax_path = Path(FLAGS.output).with_suffix(".jax.json")
    for _ in range(FLAGS.repeats):
        runs["jax"].append(_child("jax"))
        runs["torch"].append(_child("torch", f"--jax_results={jax_path}"))
    jax_results, torch_results = (_fastest(runs[name]) for name in ("jax", "torch"))
    rows = summarise(jax_results, torch_results)
    document = {"batch_size": FLAGS.batch_size, "steps_timed": FLAGS.steps,
                "repeats": FLAGS.repeats, "epoch_examples": FLAGS.train_examples,
                "cpu_count": os.cpu_count(), "jax": jax_results, "torch": torch_results,
                "rows": rows}  # fmt: skip
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{'case':28} {'kdjax s/epoch':>14} {'torch s/epoch':>14} {'ratio':>6} "
          f"{'kdjax TF/s':>10} {'torch TF/s':>10} {'peak TF/s':>9}")  # fmt: skip
    for row in rows:
        print(f"{row['case']:28} {row['kdjax_epoch_seconds']:14.1f} "
              f"{row['torch_epoch_seconds']:14.1f} {row['kdjax_over_torch']:6.2f} "
              f"{row['kdjax_tflops']:10.4f} {row['torch_tflops']:10.4f} "
              f"{row['matmul_peak_tflops']:9.4f}")  # fmt: skip
        if "stored_features_gain" in row:
            epochs = f"{FLAGS.epochs} epoch" + ("" if FLAGS.epochs == 1 else "s")
            print(f"{'':28} stored features, {epochs}: "
                  f"{row['stored_features_seconds']:.1f} s vs {row['full_steps_seconds']:.1f} s "
                  f"of full steps ({row['stored_features_gain']:.1f}×)")  # fmt: skip
    print(f"Epochs extrapolated from {FLAGS.steps} timed steps, the fastest of "
          f"{FLAGS.repeats} alternated run(s) per framework. Results: {output}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
