"""kdjax: knowledge distillation in functional JAX/Flax.

Submodules are imported on demand so that ``import kdjax.losses`` pulls in JAX
alone (no Flax, no orbax). Data flows one way through the package:

* data — ``kdjax.data`` (MNIST), ``kdjax.data.image_folder`` (CIFAR-10 and image folders);
* models — ``kdjax.models`` (Flax Linen networks by architecture), ``kdjax.models.layers``;
* teacher outputs — ``kdjax.distill.teachers`` (stored once per teacher, or online),
  ``kdjax.distill.soft_targets`` (the id-keyed store), ``kdjax.data.augment`` (jitter and the
  per-shift order);
* objective — ``kdjax.losses`` (pure JAX), ``kdjax.distill.objectives`` (the registry);
* training — ``kdjax.training`` (state, step, feeds, evaluation, the loop),
  ``kdjax.training.parallel`` (data parallelism), ``kdjax.store.checkpoints`` (orbax);
* runs — ``kdjax.runs.spec`` (RunSpec), ``kdjax.runs`` (run directories, ``load_run``);
* costs — ``kdjax.models.costs`` (FLOPs, throughput).
"""

__version__ = "0.1.0"
