"""The teacher–student pairs ``experiments.cifar10_kd`` compares distillation methods on:
each pair's networks, training protocol and loss weights, the accuracies published
for it, and the RunSpec fields and loss weights a config gives its runs
(:func:`spec_fields`, :func:`method_weights`).

- ``pytorch_tutorial`` (default: the PyTorch KD tutorial) and ``cnn_notebook`` (the
  CIFAR-10 CNN notebook): their 4-conv teacher and 2-conv student ("DeepNN" →
  "LightNN"), Adam 1e-3, batch 128, 10 epochs, no augmentation, the teacher's outputs
  stored once; the tutorial's nets have dropout 0.1 and KD at T=2 with 0.75 CE /
  0.25 soft, the notebook's none and KD at T=10 with weights 1 / 1.
- ``resnet56_resnet20``: RepDistiller's CIFAR ResNets (:mod:`kdjax.models.cifar_resnets`) and
  its protocol (``train_teacher.py`` / ``train_student.py``): SGD 0.05, momentum 0.9,
  weight decay 5e-4, batch 64, 240 epochs with the learning rate ×0.1 at epochs 150,
  180 and 210, random crops of the 4-pixel-padded image and horizontal flips, inputs
  normalised with the data set's mean and std; the teacher runs online in every
  student step (it sees the augmented batch the student sees). KD at T=4 with
  0.1 CE / 0.9 KD, FitNets with weight 100 (RepDistiller's ``-r 0.1 -a 0.9`` and
  ``-b 100``).

Every other method uses RepDistiller's CIFAR weights (:data:`COMPARED_METHODS`) on
every pair. A pair may also train under the other protocol (:data:`PROTOCOLS`:
``notebook`` or ``repdistiller``), e.g. the tutorial's nets for RepDistiller's 240 epochs.
"""

from __future__ import annotations

import dataclasses
import json

from kdjax.data import IMAGENET_MEAN, IMAGENET_STD
from kdjax.distill.objectives import get_objective
from kdjax.models import taps

# The PyTorch KD tutorial's student runs.
TUTORIAL_METHODS = ("ce", "kd", "cosine", "hint")
# The methods researchers compare against (kdjax.distill.methods), with the loss weights
# RepDistiller uses on CIFAR (its `-r` CE weight 1, the method's `-b` weight: AT's 1000
# is its ×1000), the logit-standardisation paper's 0.1 CE + 9 KD at T=2, DKD's and
# DIST's T=4, and RepDistiller's best row, CRD + KD (`-a 1 -b 0.8`, KD at the pair's T).
# Each method reads the layers RepDistiller's do (its defaults: every stage for AT, NST
# and VID, the last map for SP, the pooled features for PKT, RKD, CC and CRD).
COMPARED_METHODS = {
    "kd_standardized": {"temperature": 2.0, "hard_weight": 0.1, "soft_weight": 9.0},
    "dkd": {"temperature": 4.0, "hard_weight": 1.0, "soft_weight": 1.0},
    "dist": {"temperature": 4.0, "hard_weight": 1.0, "soft_weight": 1.0},
    "at": {"hard_weight": 1.0, "soft_weight": 1000.0},
    "nst": {"hard_weight": 1.0, "soft_weight": 50.0},
    "sp": {"hard_weight": 1.0, "soft_weight": 3000.0},
    "pkt": {"hard_weight": 1.0, "soft_weight": 30000.0},
    "rkd": {"hard_weight": 1.0, "soft_weight": 1.0},
    "cc": {"hard_weight": 1.0, "soft_weight": 0.02},
    "vid": {"hard_weight": 1.0, "soft_weight": 1.0},
    "crd": {"hard_weight": 1.0, "soft_weight": 0.8},
    "crd+kd": {
        "hard_weight": 1.0,
        "method_settings": {"crd": {"weight": 0.8}, "kd": {"weight": 1.0}},
    },
    # Trained after an initialisation stage (30 of RepDistiller's 240 epochs, kept at
    # that fraction of a run): AB and FSP then train on the labels alone, FT with ×200.
    "ab": {"hard_weight": 1.0, "soft_weight": 1.0},
    "ft": {"hard_weight": 1.0, "soft_weight": 200.0},
    "fsp": {"hard_weight": 1.0, "soft_weight": 1.0},
}
INIT_FRACTION = 30 / 240
# mdistiller's DKD warm-up: 20 of its 240 CIFAR epochs, kept at that fraction of a run.
DKD_WARMUP_FRACTION = 20 / 240
METHODS = (*TUTORIAL_METHODS, *COMPARED_METHODS)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How both networks of a pair train (the teacher as the students)."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    # Epochs (0-based) where the learning rate drops by ``lr_decay_rate``, out of
    # ``epochs``; a run of another length gets them scaled to it (:meth:`decay_epochs`).
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1
    image_augment: str = ""
    # "stored": the teacher's outputs computed once; "online": in every student step.
    teacher_mode: str = "stored"
    # "imagenet" (the tutorial's and the notebook's ImageNet mean/std) or "dataset" (the
    # data set's own).
    normalisation: str = "imagenet"

    def decay_epochs(self, epochs: int) -> tuple[int, ...]:
        """The decay epochs scaled from ``self.epochs`` to a run of ``epochs`` (the
        same fractions of the run: 150, 180, 210 of 240 are 62.5%, 75%, 87.5%)."""
        scaled = {max(1, round(epoch * epochs / self.epochs)) for epoch in self.lr_decay_epochs}
        return tuple(sorted(scaled))


# The PyTorch KD tutorial's and the CIFAR-10 CNN notebook's protocol.
NOTEBOOK_PROTOCOL = Protocol(epochs=10, batch_size=128, learning_rate=1e-3)
REPDISTILLER_PROTOCOL = Protocol(
    epochs=240,
    batch_size=64,
    learning_rate=0.05,
    optimizer="sgd",
    weight_decay=5e-4,
    lr_decay_epochs=(150, 180, 210),
    image_augment="crop_flip",
    teacher_mode="online",
    normalisation="dataset",
)
PROTOCOLS = {"notebook": NOTEBOOK_PROTOCOL, "repdistiller": REPDISTILLER_PROTOCOL}
# Per-channel mean and std of each training set (RepDistiller's CIFAR-100 values).
DATASET_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# RepDistiller's README, CIFAR-100, resnet56 → resnet20 (percent).
REPDISTILLER_RESNET56_RESNET20 = {
    "teacher": 72.34,
    "ce": 69.06,
    "kd": 70.66,
    "hint": 69.21,
    "at": 70.55,
    "sp": 69.67,
    "cc": 69.63,
    "vid": 70.38,
    "rkd": 69.61,
    "pkt": 70.34,
    "nst": 69.60,
    "crd": 71.16,
}
# Each pair's networks (registry model and settings), protocol, loss weights of the
# methods whose weights are the pair's own, and published accuracies by data set.
PRESETS = {
    "pytorch_tutorial": {
        "teacher": ("four_conv_net", {"dropout": 0.1}),
        "student": ("two_conv_net", {"dropout": 0.1}),
        "protocol": NOTEBOOK_PROTOCOL,
        "kd": {"temperature": 2.0, "hard_weight": 0.75, "soft_weight": 0.25},
        "cosine": {"hard_weight": 0.75, "soft_weight": 0.25},
        "hint": {"hard_weight": 0.75, "soft_weight": 0.25},
        "published": {
            "cifar10": {"teacher": 75.60, "ce": 70.41, "kd": 70.19, "cosine": 70.87, "hint": 71.40}
        },
        "skip": {"fsp": "FSP needs equal channels per stage (16 and 64 here)"},
        "published_source": "PyTorch KD tutorial, one docs build",
    },
    "cnn_notebook": {
        "teacher": ("four_conv_net", {}),
        "student": ("two_conv_net", {}),
        "protocol": NOTEBOOK_PROTOCOL,
        "kd": {"temperature": 10.0, "hard_weight": 1.0, "soft_weight": 1.0},
        # The notebook has no cosine or hint run; the tutorial's weights are used.
        "cosine": {"hard_weight": 0.75, "soft_weight": 0.25},
        "hint": {"hard_weight": 0.75, "soft_weight": 0.25},
        "published": {"cifar10": {"teacher": 74.43, "ce": 69.51, "kd": 71.38}},
        "skip": {"fsp": "FSP needs equal channels per stage (16 and 64 here)"},
        "published_source": "CIFAR-10 CNN notebook, one run",
    },
    "resnet56_resnet20": {
        "teacher": ("resnet56", {}),
        "student": ("resnet20", {}),
        "protocol": REPDISTILLER_PROTOCOL,
        "kd": {"temperature": 4.0, "hard_weight": 0.1, "soft_weight": 0.9},
        # RepDistiller has no cosine run; the PyTorch KD tutorial's weights are used.
        "cosine": {"hard_weight": 0.75, "soft_weight": 0.25},
        # FitNets as RepDistiller trains it: stage 2 through conv + BN + ReLU, ×100.
        "hint": {
            "hard_weight": 1.0,
            "soft_weight": 100.0,
            "method_settings": {"hint": {"layer": "stage2", "regressor": "conv_bn_relu"}},
        },
        # mdistiller's res56_res20 DKD: β = 2 (its CIFAR default is 8).
        "dkd": {
            "temperature": 4.0,
            "hard_weight": 1.0,
            "soft_weight": 1.0,
            "method_settings": {"dkd": {"beta": 2.0}},
        },
        "published": {"cifar100": REPDISTILLER_RESNET56_RESNET20},
        "published_source": "RepDistiller README, CIFAR-100",
    },
}


class _Labels(dict):
    """Row labels by method; a combination not listed is ``<prefix><method>``."""

    def __init__(self, prefix: str, labels: dict):
        super().__init__(labels)
        self.prefix = prefix

    def __missing__(self, method: str) -> str:
        return f"{self.prefix}{method}"


LABELS = _Labels("student CE + ", {
    "teacher": "teacher",
    "ce": "student CE",
    "kd": "student CE + KD",
    "hint": "student CE + hint (regressor MSE)",
})  # fmt: skip
SHORT_LABELS = _Labels("CE + ", {"teacher": "teacher", "ce": "CE", "kd": "CE + KD"})


def known_method(name: str) -> bool:
    if name in (*METHODS, "all", "compare"):
        return True
    try:
        return bool(get_objective(name).terms)
    except ValueError:
        return False


def teacher_reads(objective) -> tuple[str, ...]:
    """The teacher taps an objective reads in its main run and its initialisation stage."""
    return objective.teacher_outputs + objective.in_phase("init").teacher_outputs


def teacher_mode(config, method: str, weights: dict) -> str:
    """The protocol's mode; online for a method reading one map per stage (several
    maps of every training image would not fit a store)."""
    teacher_taps = teacher_reads(get_objective(method, weights.get("method_settings")))
    if not teacher_taps:
        return "stored"
    if any(taps.is_sequence_tap(tap) for tap in teacher_taps):
        return "online"
    return config.training_protocol().teacher_mode


def input_normalisation(protocol: Protocol, dataset_name: str) -> dict:
    """RunSpec's ``input_mean`` and ``input_std`` for this protocol and data set."""
    if protocol.normalisation == "imagenet":
        return {"input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD}
    mean, std = DATASET_NORMALISATION[dataset_name]
    return {"input_mean": mean, "input_std": std}


def method_weights(config, method: str) -> dict:
    """The RunSpec loss fields of one method (``hard_weight``, ``soft_weight``,
    ``temperature``, ``method_settings``): the preset's, overridden by the config (a
    ``cifar10_kd.Config``: its weights and its ``--method_settings``). A combination
    not listed takes CE weight 1 and each method's own weight and temperature."""
    if method == "ce":
        return {}
    preset, parts = PRESETS[config.preset], method.split("+")
    listed = preset.get(method) or COMPARED_METHODS.get(method)
    weights = dict(listed) if listed else _combined(config, parts)
    settings = {m: dict(v) for m, v in weights.pop("method_settings", {}).items()}
    if len(parts) > 1 and "kd" in parts:  # KD in a combination: at the pair's temperature
        settings.setdefault("kd", {}).setdefault("temperature", preset["kd"]["temperature"])
    epochs = config.run_epochs()["student"]
    if "dkd" in parts:
        settings.setdefault("dkd", {})["warmup_epochs"] = round(DKD_WARMUP_FRACTION * epochs, 6)
    for part in {"ab", "ft", "fsp"} & set(parts):
        settings.setdefault(part, {})["init_epochs"] = max(1, round(INIT_FRACTION * epochs))
    for name in ("temperature", "hard_weight", "soft_weight"):
        value = getattr(config, name)
        if value is not None and (name != "temperature" or method == "kd"):
            weights[name] = value
    for key, value in parse_settings(config.method_settings).items():
        target, setting = key.split(".", 1)
        if target not in parts:
            continue
        if len(parts) == 1 and setting in ("weight", "temperature"):
            weights["soft_weight" if setting == "weight" else setting] = value
        else:
            settings.setdefault(target, {})[setting] = value
    return {**weights, **({"method_settings": settings} if settings else {})}


def _combined(config, parts: list[str]) -> dict:
    """CE weight 1 and each method's own weight (and temperature) as its term's."""
    settings = {}
    for part in parts:
        own = method_weights(dataclasses.replace(config, method_settings=()), part)
        settings[part] = {"weight": own.get("soft_weight", 1.0)}
        if "temperature" in own:
            settings[part]["temperature"] = own["temperature"]
        for key, value in own.get("method_settings", {}).get(part, {}).items():
            settings[part].setdefault(key, value)
    return {"hard_weight": 1.0, "method_settings": settings}


def parse_settings(items) -> dict:
    """``["crd.negatives=4096", "kd.weight=0.9"]`` → ``{"crd.negatives": 4096, ...}``
    (numbers and true/false parsed, anything else a string)."""
    parsed = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or "." not in key:
            raise ValueError(f"a method setting is method.setting=value, got {item!r}.")
        try:
            parsed[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key.strip()] = text
    return parsed


def label(method: str, short: bool = False) -> str:
    """A method's row label (``"CE + crd+kd"`` for a combination not listed)."""
    labels = SHORT_LABELS if short else LABELS
    return labels.get(method, f"{'CE' if short else 'student CE'} + {method}")


def spec_fields(config, dataset, epochs: int) -> tuple[dict, dict]:
    """RunSpec fields every run of this config shares (``epochs``: the run's own, which
    places the learning-rate drops), and the model settings the data set adds."""
    protocol = config.training_protocol()
    schedule = {}
    if protocol.lr_decay_epochs:
        schedule = {
            "lr_schedule": "step",
            "lr_decay_epochs": protocol.decay_epochs(epochs),
            "lr_decay_rate": protocol.lr_decay_rate,
        }
    settings = {} if dataset.num_classes == 10 else {"num_classes": dataset.num_classes}
    return dict(
        epochs=epochs,
        batch_size=protocol.batch_size,
        learning_rate=protocol.learning_rate,
        optimizer=protocol.optimizer,
        weight_decay=protocol.weight_decay,
        image_augment=protocol.image_augment,
        compute_dtype=config.compute_dtype,
        **schedule,
        **input_normalisation(protocol, config.dataset),
    ), settings
