"""Knowledge-distillation losses as plain JAX functions.

This package depends on `jax` and numpy alone (no Flax, no optax), so it can be
imported into any JAX research code: ``from kdjax.losses import kd_loss``.

Conventions, following optax's losses:

* Data arguments are positional; hyperparameters are keyword-only.
* Per-example losses (logit losses, hint, cosine, AT, NST, VID, FT, AB, FSP, DKD)
  return **one value per example**; the caller reduces (usually with
  ``jnp.mean``). The batch mean equals the PyTorch expression named in each
  docstring.
* Losses defined over the batch (SP, PKT, RKD, CC, DIST, CRD) relate the examples
  of axis 0 to each other and return a **scalar**; their docstrings say so.
* Losses that read several stages of a network (AT, NST, VID, AB: one map or a
  list/tuple of maps; FSP: a list of at least two) combine the stages as
  RepDistiller does; each docstring says how and which stages RepDistiller reads.
* Logit losses reduce over the last (class) axis and keep every leading axis.
  Feature losses treat axis 0 as the batch axis and reduce over all the others.
  Feature maps are NHWC (JAX's layout).
* Arithmetic is done in at least float32, so bfloat16/float16 inputs do not lose
  the softmax; the result has that promoted dtype.
* Shape and dtype problems raise ``ValueError``/``TypeError`` at trace time with
  a message that names the argument. Hyperparameters such as ``temperature`` and
  ``alpha`` may be traced arrays (so one compiled step serves a whole sweep); when
  they are concrete (numbers or arrays known at trace time) they are checked to be
  finite and in range (``temperature`` at most :data:`MAX_TEMPERATURE`, 1e6, up to
  which the float32 losses are tested: ``docs/losses.md``). Labels are not
  range-checked (they are usually traced): a label outside ``[0, C)``, ``-1``
  included, makes that example's value and gradient NaN.
* Hyperparameters that fix a shape (``order``, ``num_negatives``) are Python ints.

The trainable parts some methods need (FitNets regressors, CRD embedding heads,
VID's regressor and variance) are Flax modules in :mod:`kdjax.models.connectors`;
each loss's docstring names the parts RepDistiller trains beside it (FT's
paraphraser and translator, AB's connector, CC's linear heads).
"""

from kdjax.losses._checks import MAX_TEMPERATURE
from kdjax.losses._classification import (
    cross_entropy,
    distillation_kl,
    kd_loss,
    soft_target_cross_entropy,
    standardize_logits,
)
from kdjax.losses._contrastive import (
    ClassIndex,
    CRDBank,
    crd_loss,
    init_class_index,
    init_crd_bank,
    sample_negative_ids,
)
from kdjax.losses._features import (
    attention_transfer_loss,
    cosine_embedding_loss,
    factor_transfer_loss,
    hint_loss,
    nst_loss,
    pool_features,
    vid_loss,
)
from kdjax.losses._initialization import activation_boundary_loss, fsp_loss
from kdjax.losses._logit_variants import dist_loss, dkd_loss, linear_warmup
from kdjax.losses._relational import (
    correlation_congruence_loss,
    pkt_loss,
    repdistiller_correlation_loss,
    rkd_loss,
    similarity_preserving_loss,
)

__all__ = [
    "MAX_TEMPERATURE",
    "ClassIndex",
    "CRDBank",
    "activation_boundary_loss",
    "attention_transfer_loss",
    "correlation_congruence_loss",
    "cosine_embedding_loss",
    "crd_loss",
    "cross_entropy",
    "dist_loss",
    "distillation_kl",
    "dkd_loss",
    "factor_transfer_loss",
    "fsp_loss",
    "hint_loss",
    "init_class_index",
    "init_crd_bank",
    "kd_loss",
    "linear_warmup",
    "nst_loss",
    "pkt_loss",
    "pool_features",
    "repdistiller_correlation_loss",
    "rkd_loss",
    "sample_negative_ids",
    "similarity_preserving_loss",
    "soft_target_cross_entropy",
    "standardize_logits",
    "vid_loss",
]
