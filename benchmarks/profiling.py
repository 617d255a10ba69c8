"""What ``benchmarks.step_profile`` measures, free of its command-line flags: a
network's CE + Adam step compiled as a ``lax.scan`` over steps and profiled by layer and
pass, the same step of its ``torch.nn`` twin profiled by ATen operation, the step's
FLOPs and the machine's matmul rate."""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.networks import IMAGE_SHAPES, STUDENTS, torch_model
from kdjax.models import get_model
from kdjax.models.costs import forward_flops
from kdjax.training import compiler
from kdjax.training.members import Members

# Trace events that are the runtime's own bookkeeping, not an operation of the program.
_RUNTIME = re.compile(r"ThunkExecutor|Compil|Codegen|Pass|Emit|LLVM|HLO|mlir|dispatch|Slinky|\$")


def jax_program(name: str, steps: int, members: int = 0, strategy: str = "auto"):
    """The compiled scan of ``steps`` CE + Adam steps, and its arguments. With
    ``members`` > 0, a population of that many students on the same batches, lifted as
    ``fit`` lifts it (:class:`kdjax.training.Members`, ``strategy``)."""
    model_name, settings, batch, _ = STUDENTS[name]
    model = get_model(model_name, **settings)
    shape = IMAGE_SHAPES.get(name, (28, 28, 1))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(steps * batch, *shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, steps * batch), jnp.int32)
    optimizer = optax.adam(1e-3)

    def loss(params, x, y, key):
        out = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()

    def update(state, batch, hyperparams, context):
        x, y, key = batch
        value, grads = jax.value_and_grad(loss)(state.params, x, y, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state), value

    population = Members.of(list(range(members)) if members else 0, strategy)
    state = population.init(model, optimizer, images[:1])
    if members:
        update = population.for_network(state.params).lift(update)

    def run(state, images, labels):
        def step(state, index):
            x = jax.lax.dynamic_slice_in_dim(images, index * batch, batch)
            y = jax.lax.dynamic_slice_in_dim(labels, index * batch, batch)
            return update(state, (x, y, jax.random.PRNGKey(index)), None, None)

        return jax.lax.scan(step, state, jnp.arange(steps))

    args = (state, images, labels)
    return compiler.jit(run).lower(*args).compile(), args


def origins_of(hlo_text: str) -> dict[str, str]:
    """Each instruction's layer and pass, from its ``op_name`` metadata."""
    origins = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = .*metadata=\{op_name=\"([^\"]+)\"", line)
        if not match:
            continue
        name, op_name = match.groups()
        inside = re.search(r"jvp\(([^)]*)\)+/(.+)$", op_name)
        if inside is None:  # outside the differentiated function: the optimizer's update
            origins[name] = "optimizer"
            continue
        model, path = inside.group(1), inside.group(2).split("/")
        # A named submodule (conv1), else an operation of the model's own body (the
        # max-pool's reduce_max), else the loss around the model.
        part = path[0] if len(path) > 1 else (f"{path[0]} in {model}" if model else "loss")
        origins[name] = f"{part} {'backward' if 'transpose(' in op_name else 'forward'}"
    return origins


def step_gflop(name: str) -> float:
    """Forward + backward of one step, taken as 3× XLA's count of the forward pass."""
    model_name, settings, batch, _ = STUDENTS[name]
    model = get_model(model_name, **settings)
    shape = IMAGE_SHAPES.get(name, (28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    return 3 * forward_flops(model, variables, shape, batch) * batch / 1e9


def matmul_gflops(size: int = 2048, rounds: int = 5, dtype=jnp.float32) -> float:
    """This machine's matrix-product rate in ``dtype`` under XLA, the best of ``rounds``."""
    square = jnp.ones((size, size), dtype)
    product = jax.jit(jnp.matmul)
    jax.block_until_ready(product(square, square))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(product(square, square))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def profile_jax(name: str, steps: int, members: int = 0, strategy: str = "auto") -> dict:
    compiled, args = jax_program(name, steps, members, strategy)
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    step_ms = (time.perf_counter() - start) / steps * 1e3
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            jax.block_until_ready(compiled(*args))
        path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
        profile = jax.profiler.ProfileData.from_file(path)
        by_op = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLA"):
                    continue
                for event in line.events:
                    if not _RUNTIME.search(event.name):
                        by_op[event.name] += event.duration_ns / 1e6 / steps
    origins = origins_of(compiled.as_text())
    by_layer, by_kind = collections.Counter(), collections.Counter()
    for op, ms in by_op.items():
        by_layer[origins.get(op, "other")] += ms
        by_kind[re.sub(r"\.\d+$", "", op)] += ms
    return {
        "step_ms": round(step_ms, 2),
        "op_ms_sum": round(sum(by_op.values()), 2),
        "by_layer": _rounded(by_layer),
        "by_kind": _rounded(by_kind),
    }


def profile_torch(name: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    _, _, batch, _ = STUDENTS[name]
    torch.manual_seed(0)
    model = torch_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    height, width, channels = IMAGE_SHAPES.get(name, (28, 28, 1))
    images = torch.randn(steps * batch, channels, height, width)
    labels = torch.randint(0, 10, (steps * batch,))

    def run():
        for step in range(steps):
            part = slice(step * batch, (step + 1) * batch)
            loss = F.cross_entropy(model(images[part]), labels[part])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    run()
    start = time.perf_counter()
    run()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    by_op = collections.Counter(
        {row.key: row.self_cpu_time_total / 1e3 / steps for row in profile.key_averages()}
    )
    return {
        "step_ms": round(step_ms, 2),
        "threads": torch.get_num_threads(),
        "by_op": _rounded(by_op),
    }


def _rounded(counter: collections.Counter) -> dict[str, float]:
    return {key: round(ms, 3) for key, ms in counter.most_common() if ms >= 0.0005}
