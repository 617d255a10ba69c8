"""What one CRD step costs on this machine, part by part, at RepDistiller's CIFAR sizes:
the loss with its gradients as :func:`kdjax.losses.crd_loss` computes it, beside the
same scores taken by gathering each candidate's bank row; and the class-aware draw of
the negatives (:func:`kdjax.losses.sample_negative_ids`). One process; the forms are
alternated in rounds so that load on the machine hits them alike (the median is kept).

    python -m benchmarks.crd_speed                    # 50,000 rows, batch 128, 16,384 negatives
    python -m benchmarks.crd_speed --examples=5000 --negatives=4096 --rounds=3
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kdjax import losses
from kdjax.losses._contrastive import _nce_loss

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (other benchmarks share names)."""
    flags.DEFINE_integer("examples", 50_000, "Rows of the memory bank (training examples).")
    flags.DEFINE_integer("batch", 128, "Batch size.")
    flags.DEFINE_integer("negatives", 16_384, "Negatives per example (RepDistiller: 16,384).")
    flags.DEFINE_integer("dim", 128, "Embedding size (RepDistiller: 128).")
    flags.DEFINE_integer("classes", 10, "Classes of the training labels.")
    flags.DEFINE_integer("rounds", 5, "Alternated rounds; the median is kept.")


def gathered_loss(s_emb, t_emb, ids, bank, negative_ids, temperature=0.07):
    """CRD's loss with every candidate's bank row gathered per example (the reference
    form: ``[batch, K + 1, dim]`` rows for each direction), normalisers set; the NCE
    term is kdjax's own."""
    candidates = jnp.concatenate([ids[:, None], negative_ids], axis=1)
    num_examples = bank.student.shape[0]
    total = 0.0
    for memory, emb, normalizer in (
        (bank.teacher, s_emb, bank.student_normalizer),
        (bank.student, t_emb, bank.teacher_normalizer),
    ):
        rows = jax.lax.stop_gradient(memory[candidates])
        scores = jnp.exp(jnp.einsum("bkd,bd->bk", rows, emb) / temperature) / normalizer
        total += _nce_loss(scores, num_examples)
    return total


def programs(examples, batch, negatives, dim, classes):
    """``{name: (compiled function, its arguments)}`` for the three timed parts."""
    key = jax.random.PRNGKey(0)
    bank = losses.init_crd_bank(examples, dim, key)
    bank = bank._replace(student_normalizer=jnp.float32(5.0), teacher_normalizer=jnp.float32(5.0))
    s_emb, t_emb = (
        x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        for x in jax.random.normal(jax.random.PRNGKey(1), (2, batch, dim))
    )
    labels = np.random.default_rng(0).integers(0, classes, examples)
    index = losses.init_class_index(labels, classes)
    ids = jnp.arange(batch)
    negative_ids = losses.sample_negative_ids(
        key, jnp.asarray(labels[:batch]), index, num_negatives=negatives
    )

    def kdjax_loss(s, t):
        return losses.crd_loss(s, t, ids, bank, None, negative_ids=negative_ids)[0]

    def gathered(s, t):
        return gathered_loss(s, t, ids, bank, negative_ids)

    def draw(k):
        return losses.sample_negative_ids(
            k, jnp.asarray(labels[:batch]), index, num_negatives=negatives
        )

    grad = (0, 1)
    return {
        "crd_loss + gradients": (jax.jit(jax.value_and_grad(kdjax_loss, grad)), (s_emb, t_emb)),
        "gathered rows + gradients": (jax.jit(jax.value_and_grad(gathered, grad)), (s_emb, t_emb)),
        "sample_negative_ids": (jax.jit(draw), (key,)),
    }


def measure(parts: dict, rounds: int) -> dict[str, float]:
    """Median milliseconds of each part over ``rounds`` alternated rounds (compiled first)."""
    for function, args in parts.values():
        jax.block_until_ready(function(*args))
    times = {name: [] for name in parts}
    for _ in range(rounds):
        for name, (function, args) in parts.items():
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv):
    del argv
    parts = programs(FLAGS.examples, FLAGS.batch, FLAGS.negatives, FLAGS.dim, FLAGS.classes)
    print(
        f"CRD at {FLAGS.examples:,} bank rows, batch {FLAGS.batch}, {FLAGS.negatives:,} "
        f"negatives, dim {FLAGS.dim}; median of {FLAGS.rounds} rounds on {jax.devices()[0]}:"
    )
    for name, ms in measure(parts, FLAGS.rounds).items():
        print(f"  {name:28s} {ms:9.1f} ms")


if __name__ == "__main__":
    define_flags()
    app.run(main)
