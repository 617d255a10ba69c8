"""kdjax: knowledge distillation in functional JAX/Flax.

Submodules are imported on demand so that ``import kdjax.losses`` pulls in JAX
alone (no Flax, no orbax): ``kdjax.losses`` (KD, hint and cosine losses),
``kdjax.models`` (Flax Linen teachers and students), ``kdjax.data`` (MNIST and
image-folder sources), ``kdjax.soft_targets`` (the stored teacher-logit store),
``kdjax.train`` (the shared training loop and student populations),
``kdjax.checkpoints`` (orbax), ``kdjax.distill`` (run specs and run directories),
``kdjax.layers`` (CPU-tuned Conv/Dense/max-pool) and ``kdjax.costs`` (FLOPs,
throughput).
"""

__version__ = "0.1.0"
