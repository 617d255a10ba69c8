"""The distillation methods, one :class:`Method` each: the term a student minimises
beside its label CE, the layers it reads, its settings with their published defaults,
and the trainable parts it adds beside the student.

A method's term is ``term(outputs, teacher, settings, batch) -> loss`` (one value per
example, or a scalar for losses over the batch): ``outputs`` are the student's
(its output dict, its taps and its head's outputs), ``teacher`` maps the teacher
taps the method reads to their values, ``settings`` are the method's settings (the
ones in ``traced`` as traced arrays, so a sweep over them compiles once). The layers
come from the settings ``student_layer`` and ``teacher_layer``
(:mod:`kdjax.models.taps`: an output, a sown or captured intermediate, or a pattern
for one map per stage).

The defaults are the papers' or RepDistiller's (Tian et al., ICLR 2020) CIFAR
settings; each method's ``doc`` says where it differs and why. Each method's loss,
its reference and its checks: :mod:`kdjax.losses`. Where kdjax differs:

* ``hint`` defaults to the PyTorch KD tutorial's hint (a linear 3×3 regressor on the
  last maps, the tutorial's own run); FitNets as RepDistiller trains it is
  ``layer="stage2", regressor="conv_bn_relu"``, and ``init_epochs > 0`` adds the paper's
  first stage.
* Warm-ups (DKD's 20 epochs) rise every step, where mdistiller's rise once an epoch.
* AB's, FSP's and FitNets' initialisation stages train every parameter of the student
  (the layers past the ones read get no gradient there; RepDistiller leaves the
  classifier out of the optimizer).
* DIST's β = γ = 1 are the paper's ImageNet values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.models import heads
from kdjax.types import Batch, Outputs

Settings = Mapping[str, Any]
Term = Callable[[Outputs, dict, Settings, Batch], jax.Array]
# RepDistiller reads every stage of its networks (feat[1:-1]) for AT, NST and VID.
STAGES = "stage?"


@dataclasses.dataclass(frozen=True)
class Method:
    """One distillation term (module docstring). ``defaults`` lists every setting the
    method takes; ``traced`` those that are traced arrays in the step (weights,
    temperatures and other floats a sweep may vary);
    ``head(settings, train_examples, train_labels)`` builds its trainable parts
    (:mod:`kdjax.models.heads`). ``revision`` counts changes of the method's
    definition; it joins the identity of a run, so a run of an older definition is
    never reused as this one."""

    name: str
    term: Term | None
    defaults: Settings = dataclasses.field(default_factory=dict)
    traced: tuple[str, ...] = ("weight",)
    head: Callable[[Settings, int, Any], Any] | None = None
    revision: int = 0
    doc: str = ""
    # The term of the initialisation stage (``init_epochs`` of it, before the main
    # training), where the method has one: trained alone, without the labels' CE.
    init_term: Term | None = None
    # Parameter-path patterns (kdjax.training.trainable_mask) not trained in a phase.
    frozen: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def term_in(self, phase: str) -> Term | None:
        return self.init_term if phase == "init" else self.term

    def settings(self, overrides: Settings | None = None) -> dict:
        """The defaults with ``overrides`` (refusing unknown names), ``student_layer``
        and ``teacher_layer`` filled from ``layer``."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults) - {"student_layer", "teacher_layer"})
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no setting {', '.join(map(repr, unknown))}; "
                f"its settings: {', '.join(sorted(self.defaults))}."
            )
        settings = {**self.defaults, **overrides}
        if "layer" in settings:
            settings.setdefault("student_layer", settings["layer"])
            settings.setdefault("teacher_layer", settings["layer"])
        return settings


def _layers(settings: Settings) -> tuple[str, str]:
    return settings.get("student_layer", "logits"), settings.get("teacher_layer", "logits")


def student_taps(settings: Settings) -> str:
    return _layers(settings)[0]


def teacher_taps(settings: Settings) -> str:
    return _layers(settings)[1]


def _pair(outputs, teacher, settings):
    student_layer, teacher_layer = _layers(settings)
    return outputs[student_layer], teacher[teacher_layer]


def _kd(outputs, teacher, settings, batch):
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al. 2015)."""
    return losses.distillation_kl(
        *_pair(outputs, teacher, settings), temperature=settings["temperature"]
    )


def _kd_standardized(outputs, teacher, settings, batch):
    """KD on z-score standardised logits (Sun et al., CVPR 2024)."""
    s, t = _pair(outputs, teacher, settings)
    return losses.distillation_kl(s, t, temperature=settings["temperature"], standardize=True)


def _dkd(outputs, teacher, settings, batch):
    """Decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD."""
    s, t = _pair(outputs, teacher, settings)
    return losses.dkd_loss(
        s, t, batch["labels"], alpha=settings["alpha"], beta=settings["beta"],
        temperature=settings["temperature"],
    )  # fmt: skip


def _dist(outputs, teacher, settings, batch):
    """DIST (Huang et al., NeurIPS 2022): β·inter-class + γ·intra-class relations."""
    s, t = _pair(outputs, teacher, settings)
    return losses.dist_loss(
        s, t, beta=settings["beta"], gamma=settings["gamma"], temperature=settings["temperature"]
    )


def _cosine(outputs, teacher, settings, batch):
    """``1 − cos`` between the student's flattened features and the teacher's,
    average-pooled to the student's width (the PyTorch KD tutorial's cosine run)."""
    s, t = _pair(outputs, teacher, settings)
    s = s.reshape(s.shape[0], -1)
    return losses.cosine_embedding_loss(
        s, losses.pool_features(t.reshape(t.shape[0], -1), s.shape[-1])
    )


def _hint(outputs, teacher, settings, batch):
    """MSE between the regressed student map and the teacher's (FitNets)."""
    return losses.hint_loss(outputs["hint"], teacher[teacher_taps(settings)])


def _vid(outputs, teacher, settings, batch):
    """VID: negative log-likelihood of the teacher's maps under the head's Gaussians."""
    return losses.vid_loss(
        outputs["vid_mean"], teacher[teacher_taps(settings)], outputs["vid_log_scale"]
    )


def _crd(outputs, teacher, settings, batch):
    """CRD: the head's NCE loss against its memory bank (a scalar over the batch)."""
    return outputs["crd_loss"]


def _cc(outputs, teacher, settings, batch):
    """RepDistiller's CC: its correlation loss between the two linear embeddings."""
    return losses.repdistiller_correlation_loss(outputs["cc_student"], outputs["cc_teacher"])


def _ab_init(outputs, teacher, settings, batch):
    """AB's initialisation term: the connected student pre-activations against the
    teacher's (RepDistiller's ``ABLoss``, summed over stages with its weights)."""
    return losses.activation_boundary_loss(
        outputs["ab_connected"], teacher[teacher_taps(settings)], margin=settings["margin"]
    )


def _fsp_init(outputs, teacher, settings, batch):
    """FSP's initialisation term: the FSP matrices of consecutive maps."""
    return losses.fsp_loss(*_pair(outputs, teacher, settings))


def _ft(outputs, teacher, settings, batch):
    """FT: the distance between the translator's and the paraphraser's factors."""
    target = jax.lax.stop_gradient(outputs["ft_teacher"])
    return losses.factor_transfer_loss(outputs["ft_student"], target)


def _ft_init(outputs, teacher, settings, batch):
    """FT's initialisation term: the paraphraser reconstructs the teacher's map (MSE)."""
    target = teacher[teacher_taps(settings)]
    squared = (outputs["ft_reconstruction"] - target) ** 2
    return jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)


def _between(loss: Callable, **keywords) -> Term:
    """A term applying ``loss(student_value, teacher_value)``."""

    def term(outputs, teacher, settings, batch):
        return loss(*_pair(outputs, teacher, settings), **{k: settings[k] for k in keywords})

    term.__doc__ = f"``{loss.__name__}`` between the student's and the teacher's layers."
    return term


def _flat(loss: Callable) -> Callable:
    """``loss`` on features flattened to ``[batch, -1]`` (relational losses)."""

    def flat(s, t, **keywords):
        return loss(s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1), **keywords)

    flat.__name__ = loss.__name__
    return flat


LOGITS = {"weight": 1.0, "temperature": 4.0}
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("kd", _kd, LOGITS, ("weight", "temperature")),
        Method(
            "kd_standardized",
            _kd_standardized,
            {"weight": 9.0, "temperature": 2.0},
            ("weight", "temperature"),
            revision=1,
            doc="The paper's CIFAR weights are 0.1 CE + 9 KD at T=2 (its Table 7 setting).",
        ),
        Method(
            "dkd",
            _dkd,
            {**LOGITS, "weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20.0},
            ("weight", "temperature", "alpha", "beta"),
            revision=1,
            doc="mdistiller's CIFAR defaults: α 1, β 8 (2 for resnet56 → resnet20), T 4, "
            "and a 20-epoch linear warm-up of the term's weight, counted in steps.",
        ),
        Method(
            "dist",
            _dist,
            {**LOGITS, "beta": 1.0, "gamma": 1.0},
            ("weight", "temperature", "beta", "gamma"),
        ),
        Method("cosine", _cosine, {"weight": 1.0, "layer": "features"}),
        Method(
            "hint",
            _hint,
            {
                "weight": 1.0,
                "layer": "feature_map",
                "regressor": "linear",
                "kernel_size": 3,
                "init_epochs": 0.0,
            },
            head=lambda settings, count, labels: heads.HintHead.of(settings),
            init_term=_hint,
            doc="Defaults: the PyTorch KD tutorial's hint (its last maps, a linear 3×3 "
            "regressor); RepDistiller's FitNets is layer='stage2', regressor='conv_bn_relu'. "
            "init_epochs > 0 trains the paper's first stage first: the hint alone, without "
            "the labels' CE (RepDistiller trains FitNets in one stage).",
        ),
        Method(
            "vid",
            _vid,
            {"weight": 1.0, "layer": STAGES},
            head=lambda settings, count, labels: heads.VIDHead.of(settings),
            revision=1,
        ),
        Method(
            "crd",
            _crd,
            {
                "weight": 0.8,
                "layer": "features",
                "negatives": 16384,
                "dim": 128,
                "nce_temperature": 0.07,
                "momentum": 0.5,
                "class_aware": True,
            },
            head=lambda settings, count, labels: heads.CRDHead.of(settings, count, labels),
            revision=1,
        ),  # fmt: skip
        Method(
            "at",
            _between(losses.attention_transfer_loss, p=None),
            {"weight": 1000.0, "layer": STAGES, "p": 2.0},
            revision=1,
        ),
        Method("nst", _between(losses.nst_loss), {"weight": 50.0, "layer": STAGES}, revision=1),
        Method(
            "sp",
            _between(losses.similarity_preserving_loss),
            {"weight": 3000.0, "layer": "feature_map"},
        ),  # fmt: skip
        Method("pkt", _between(_flat(losses.pkt_loss)), {"weight": 30000.0, "layer": "features"}),
        Method("rkd", _between(_flat(losses.rkd_loss)), {"weight": 1.0, "layer": "features"}),
        Method(
            "cc",
            _cc,
            {"weight": 0.02, "layer": "features", "dim": 128},
            head=lambda settings, count, labels: heads.CCHead.of(settings),
            revision=1,
        ),  # fmt: skip
        Method(
            "ab",
            None,
            {"weight": 1.0, "layer": "stage*_preact", "margin": 1.0, "init_epochs": 30.0},
            head=lambda settings, count, labels: heads.ABHead.of(settings),
            init_term=_ab_init,
            doc="RepDistiller: 30 epochs of the AB loss alone on the connected pre-activations, "
            "then the labels' CE only (its main loop adds no AB term).",
        ),
        Method(
            "fsp",
            None,
            {"weight": 1.0, "layer": "stem|stage?", "init_epochs": 30.0},
            init_term=_fsp_init,
            doc="RepDistiller: 30 epochs of the FSP loss alone on the stem's and the stages' "
            "maps, then the labels' CE only. Student and teacher need equal channels per map.",
        ),
        Method(
            "ft",
            _ft,
            {"weight": 200.0, "layer": "feature_map", "k": 0.5, "init_epochs": 30.0},
            head=lambda settings, count, labels: heads.FTHead.of(settings),
            init_term=_ft_init,
            frozen={
                "init": ("student/", "head/(.*/)?translator/"),
                "main": ("head/(.*/)?paraphraser/",),
            },
            doc="RepDistiller: the paraphraser learns to reconstruct the teacher's last map for "
            "30 epochs (MSE), then CE + 200·FT with the paraphraser frozen.",
        ),
    )  # fmt: skip
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def warmup_factor(settings: Settings, step, steps_per_epoch: int):
    """The weight's linear warm-up factor at ``step`` (0 at step 0, 1 from the end of
    ``warmup_epochs`` on; 1 without a warm-up)."""
    epochs = float(settings.get("warmup_epochs", 0.0) or 0.0)
    if epochs <= 0 or step is None:
        return 1.0
    return losses.linear_warmup(step, max(1.0, epochs * max(1, steps_per_epoch)))


def traced_values(method: Method, settings: Settings) -> dict[str, jnp.ndarray]:
    """The method's traced settings as float32 arrays."""
    return {
        key: jnp.asarray(settings[key], jnp.float32) for key in method.traced if key in settings
    }
