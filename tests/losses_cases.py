"""The distillation losses under test, each with its inputs and its PyTorch twin.

Shared by the parity, gradient and property tests of the new losses
(``test_losses_parity.py``, ``test_losses_properties.py``). A case builds float64
NumPy inputs for a named shape variant; the tests cast them as they need.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdjax.losses import (
    attention_transfer_loss,
    correlation_congruence_loss,
    dist_loss,
    distillation_kl,
    dkd_loss,
    nst_loss,
    pkt_loss,
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
DEGENERATE = ("identical_rows", "zero_rows", "batch_1", "batch_2")


def rng_for(*key) -> np.random.Generator:
    # Deterministic per test case (str hashes are salted per process; crc32 is not).
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@dataclass(frozen=True)
class Case:
    """One loss: ``loss(*floats, *ints)``, its torch twin, and how to build inputs.

    ``kind`` picks the shapes; ``batch_loss`` says whether it returns a scalar;
    ``num_floats`` inputs are differentiated, the rest (labels) are integers.
    """

    name: str
    kind: str
    loss: Callable
    torch_name: str
    batch_loss: bool
    scale: float = 1.0
    torch_kwargs: tuple = ()

    def shapes(self, variant: str) -> tuple:
        table = {"maps": MAP_SHAPES, "features": FEATURE_SHAPES, "logits": LOGIT_SHAPES}
        if self.kind == "vid":
            mean, target = VID_SHAPES[variant]
            return mean, target, (mean[-1],)
        return table[self.kind.removesuffix("_labels")][variant]

    def inputs(self, variant: str, degenerate: str | None = None) -> tuple:
        rng = rng_for(self.name, variant, degenerate)
        shapes = self.shapes(variant)
        if degenerate == "batch_1" or degenerate == "batch_2":
            size = 1 if degenerate == "batch_1" else 2
            shapes = tuple(s if i == 2 else (size, *s[1:]) for i, s in enumerate(shapes))
        floats = [rng.standard_normal(shape) * self.scale for shape in shapes]
        if self.kind == "maps":  # feature maps after a ReLU, as AT and NST see them
            floats = [np.maximum(f, 0.0) + 0.1 * f for f in floats]
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
    def num_floats(self) -> int:
        return {"vid": 3}.get(self.kind, 2) if not self.kind.endswith("_labels") else 2


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
