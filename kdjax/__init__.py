"""kdjax: knowledge distillation in functional JAX/Flax.

Submodules are imported on demand so that ``import kdjax.losses`` pulls in JAX
alone (no Flax, no orbax). Data flows one way through the package:

* data — ``kdjax.data`` (MNIST), ``kdjax.image_folder`` (CIFAR-10 and image folders);
* models — ``kdjax.models`` (Flax Linen networks by architecture), ``kdjax.layers``;
* teacher outputs — ``kdjax.teachers`` (stored once per teacher, or online),
  ``kdjax.soft_targets`` (the id-keyed store), ``kdjax.augment`` (jitter and the
  per-shift order);
* objective — ``kdjax.losses`` (pure JAX), ``kdjax.objectives`` (the registry);
* training — ``kdjax.training`` (state, step, feeds, evaluation, the loop),
  ``kdjax.parallel`` (data parallelism), ``kdjax.checkpoints`` (orbax);
* runs — ``kdjax.spec`` (RunSpec), ``kdjax.runs`` (run directories, ``load_run``);
* costs — ``kdjax.costs`` (FLOPs, throughput).
"""

__version__ = "0.1.0"
