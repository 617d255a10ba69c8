"""The distillation losses under test, each with its inputs and its PyTorch twin.

Shared by the parity, gradient and property tests of the new losses
(``test_losses_parity.py``, ``test_losses_properties.py``). A case builds float64
NumPy inputs for a named shape variant, as one flat tuple (floats, then integer
labels); the tests cast them as they need and call :meth:`Case.flat_loss`, which
regroups the floats into per-stage lists for the multi-stage losses.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdjax.losses import (
    activation_boundary_loss,
    attention_transfer_loss,
    correlation_congruence_loss,
    dist_loss,
    distillation_kl,
    dkd_loss,
    factor_transfer_loss,
    fsp_loss,
    nst_loss,
    pkt_loss,
    repdistiller_correlation_loss,
    rkd_loss,
    similarity_preserving_loss,
    vid_loss,
)

# Two shape variants per kind: a typical one and a second with other widths (and,
# for maps, spatial sizes that need pooling). Few shapes: each one costs a compile.
MAP_SHAPES = {"a": ((4, 4, 4, 3), (4, 4, 4, 5)), "b": ((2, 8, 6, 2), (2, 4, 3, 6))}
FEATURE_SHAPES = {"a": ((6, 5), (6, 7)), "b": ((3, 2, 2, 3), (3, 4))}
LOGIT_SHAPES = {"a": ((8, 10), (8, 10)), "b": ((3, 4), (3, 4))}
VID_SHAPES = {"a": ((4, 3, 3, 5), (4, 3, 3, 5)), "b": ((6, 7), (6, 7))}
EMBEDDING_SHAPES = {"a": ((6, 5), (6, 5)), "b": ((3, 2, 2), (3, 2, 2))}
# Several stages (student maps, then teacher maps), shaped like a CIFAR ResNet's three
# stages (halving the size, widening), and with the teacher's maps larger (pooling).
STAGE_MAP_SHAPES = {
    "a": ((3, 8, 8, 4), (3, 4, 4, 6), (3, 2, 2, 8), (3, 8, 8, 6), (3, 4, 4, 10), (3, 2, 2, 12)),
    "b": ((2, 4, 4, 3), (2, 2, 2, 5), (2, 8, 8, 4), (2, 4, 4, 6)),
}
# VID per stage: predicted means, then teacher maps (same channels; b's first stage
# pooled, its second a pooled feature vector), then one log-scale per channel.
VID_STAGE_SHAPES = {
    "a": ((3, 4, 4, 5), (3, 2, 2, 6), (3, 8, 8, 5), (3, 2, 2, 6), (5,), (6,)),
    "b": ((2, 2, 2, 3), (2, 7), (2, 4, 4, 3), (2, 7), (3,), (7,)),
}
# AB: the connector's outputs have the teacher's shapes.
BOUNDARY_SHAPES = {
    "a": ((3, 4, 4, 3), (3, 2, 2, 5), (3, 2, 2, 6)) * 2,
    "b": ((2, 3, 3, 4),) * 2,
}
# FSP: the stem's and the stages' maps, channel counts shared by student and teacher
# (b: the teacher's maps twice as large, so each network's pairs pool differently).
FSP_SHAPES = {
    "a": ((3, 8, 8, 4), (3, 8, 8, 4), (3, 4, 4, 6), (3, 2, 2, 8)) * 2,
    "b": ((2, 4, 4, 3), (2, 2, 2, 5), (2, 2, 2, 2), (2, 8, 8, 3), (2, 4, 4, 5), (2, 4, 4, 2)),
}
DEGENERATE = ("identical_rows", "zero_rows", "batch_1", "batch_2")


def rng_for(*key) -> np.random.Generator:
    # Deterministic per test case (str hashes are salted per process; crc32 is not).
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@dataclass(frozen=True)
class Case:
    """One loss: ``loss(*floats, *ints)``, its torch twin, and how to build inputs.

    ``kind`` picks the shapes; ``batch_loss`` says whether it returns a scalar. The
    floats are differentiated, the integers (labels) are not. A multi-stage loss
    takes ``stage_arguments`` lists (one array per stage each), filled in order
    from the flat floats.
    """

    name: str
    kind: str
    loss: Callable
    torch_name: str
    batch_loss: bool
    scale: float = 1.0
    torch_kwargs: tuple = ()
    stage_arguments: int = 0

    def shapes(self, variant: str) -> tuple:
        table = {
            "maps": MAP_SHAPES,
            "features": FEATURE_SHAPES,
            "logits": LOGIT_SHAPES,
            "embeddings": EMBEDDING_SHAPES,
            "stage_maps": STAGE_MAP_SHAPES,
            "vid_stages": VID_STAGE_SHAPES,
            "boundaries": BOUNDARY_SHAPES,
            "fsp": FSP_SHAPES,
        }
        if self.kind == "vid":
            mean, target = VID_SHAPES[variant]
            return mean, target, (mean[-1],)
        return table[self.kind.removesuffix("_labels")][variant]

    def inputs(self, variant: str, degenerate: str | None = None) -> tuple:
        rng = rng_for(self.name, variant, degenerate)
        shapes = self.shapes(variant)
        if degenerate == "batch_1" or degenerate == "batch_2":
            size = 1 if degenerate == "batch_1" else 2
            # Only batched arrays (a log-scale has no batch axis).
            shapes = tuple(s if len(s) < 2 else (size, *s[1:]) for s in shapes)
        floats = [rng.standard_normal(shape) * self.scale for shape in shapes]
        if self.kind in ("maps", "stage_maps", "fsp"):
            # feature maps after a ReLU, as AT, NST, FSP see them (leaky for FT's factors)
            floats = [np.maximum(f, 0.0) + 0.1 * f for f in floats]
        if self.kind == "boundaries":
            # Pre-activations; the teacher's kept 0.1 from 0, where AB's indicator jumps,
            # so finite differences do not straddle it.
            half = len(floats) // 2
            floats[half:] = [t + 0.1 * np.sign(t) for t in floats[half:]]
        if degenerate == "identical_rows":
            floats[0] = np.broadcast_to(floats[0][:1], floats[0].shape).copy()
        if degenerate == "zero_rows":
            floats[0][0] = 0.0
            floats[1][min(1, len(floats[1]) - 1)] = 0.0
        if self.kind.endswith("_labels"):
            num_classes = shapes[0][-1]
            return (*floats, rng.integers(0, num_classes, size=shapes[0][:-1]))
        return tuple(floats)

    @property
    def num_ints(self) -> int:
        return 1 if self.kind.endswith("_labels") else 0

    def split(self, inputs: tuple) -> tuple[tuple, tuple]:
        """``(floats, ints)`` of a flat input tuple."""
        cut = len(inputs) - self.num_ints
        return tuple(inputs[:cut]), tuple(inputs[cut:])

    def regroup(self, floats) -> list:
        """The floats as the loss takes them: ``stage_arguments`` equal lists, or as is."""
        if not self.stage_arguments:
            return list(floats)
        per_list = len(floats) // self.stage_arguments
        return [
            list(floats[i * per_list : (i + 1) * per_list]) for i in range(self.stage_arguments)
        ]

    def flat_loss(self, *inputs):
        """The loss called on a flat input tuple."""
        floats, ints = self.split(inputs)
        return self.loss(*self.regroup(floats), *ints)


CASES = {
    case.name: case
    for case in [
        Case("at", "maps", attention_transfer_loss, "attention_transfer", False),
        Case(
            "at_p1",
            "maps",
            lambda s, t: attention_transfer_loss(s, t, p=1),
            "attention_transfer",
            False,
            torch_kwargs=(("p", 1),),
        ),
        Case("nst", "maps", nst_loss, "nst", False),
        Case("vid", "vid", vid_loss, "vid", False),
        Case(
            "at_stages",
            "stage_maps",
            attention_transfer_loss,
            "attention_transfer",
            False,
            stage_arguments=2,
        ),
        Case("nst_stages", "stage_maps", nst_loss, "nst", False, stage_arguments=2),
        Case("vid_stages", "vid_stages", vid_loss, "vid", False, stage_arguments=3),
        Case("ft", "maps", factor_transfer_loss, "factor_transfer", False),
        Case(
            "ab",
            "boundaries",
            activation_boundary_loss,
            "activation_boundary",
            False,
            stage_arguments=2,
        ),
        Case(
            "ab_margin",
            "boundaries",
            lambda s, t: activation_boundary_loss(s, t, margin=0.5),
            "activation_boundary",
            False,
            torch_kwargs=(("margin", 0.5),),
            stage_arguments=2,
        ),
        Case("fsp", "fsp", fsp_loss, "fsp", False, stage_arguments=2),
        Case(
            "cc_repdistiller",
            "embeddings",
            repdistiller_correlation_loss,
            "repdistiller_correlation",
            True,
        ),
        Case("sp", "features", similarity_preserving_loss, "similarity_preserving", True),
        Case("pkt", "features", pkt_loss, "pkt", True),
        Case("rkd", "features", rkd_loss, "rkd", True),
        Case(
            "cc",
            "features",
            lambda s, t: correlation_congruence_loss(s, t, gamma=0.4, order=3),
            "correlation_congruence",
            True,
            scale=0.5,
            torch_kwargs=(("gamma", 0.4), ("order", 3)),
        ),
        Case(
            "dkd",
            "logits_labels",
            lambda s, t, y: dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
            "dkd",
            False,
            scale=3.0,
        ),
        Case(
            "dist",
            "logits",
            lambda s, t: dist_loss(s, t, beta=1.0, gamma=2.0, temperature=4.0),
            "dist",
            True,
            scale=3.0,
            torch_kwargs=(("beta", 1.0), ("gamma", 2.0), ("tau", 4.0)),
        ),
        Case(
            "standardized_kl",
            "logits",
            lambda s, t: distillation_kl(s, t, temperature=2.0, standardize=True),
            "standardized_kl",
            False,
            scale=3.0,
            torch_kwargs=(("temperature", 2.0),),
        ),
    ]
}
