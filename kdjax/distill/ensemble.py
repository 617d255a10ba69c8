"""Several trained teachers taught as one: a :class:`TeacherEnsemble` goes wherever a
:class:`~kdjax.distill.teachers.Teacher` goes in :func:`kdjax.runs.train_run`, stored
or online, and its logits combine its members' logits::

    ensemble = TeacherEnsemble([conv_teacher, mlp_teacher], combine="probabilities")
    student = train_run(student_spec, dataset, workdir, teacher=ensemble)

``combine="logits"`` averages the members' logits; ``combine="probabilities"``
averages their softmax probabilities and gives the log of that mean as the
ensemble's logits (:func:`combine_logits`). Only the output ``"logits"`` exists for an
ensemble: its members may have different architectures, so their features need not
match.

Stored, the ensemble combines the members' own stores (each member's
:meth:`Teacher.outputs`, computed once per member and reused by any ensemble it joins).
Online, one Flax module (:class:`EnsembleModel`) runs every member on the raw images
with its own preprocessing, from one variables pytree that holds each member's
variables under its name in every collection (``{"params": {name: ...}, ...}``).
The ensemble's fingerprint covers the combine mode and its members' fingerprints in
order, so a student of one ensemble is never reused for another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data import Dataset
from kdjax.training import OnlineTeacher
from kdjax.training.recipe import preprocess_of

if TYPE_CHECKING:  # teachers.py re-exports this module; the member type is only a type here
    from kdjax.distill.teachers import Teacher
    from kdjax.runs.spec import RunSpec

COMBINES = ("logits", "probabilities")


def combine_logits(logits: Sequence[jax.Array] | jax.Array, combine: str = "logits") -> jax.Array:
    """The ensemble's logits from its members' (a sequence, or a leading member axis).

    ``"logits"``: the mean of the members' logits. ``"probabilities"``: the log of the
    mean of the members' softmax probabilities (over the last axis), so that at
    temperature 1 the soft target is the members' mean probability. At a temperature
    ``T`` the student's soft target, ``softmax(logits / T)``, is that mean probability
    raised to ``1 / T`` and renormalised, not the mean of the members' own tempered
    probabilities.
    """
    _check_combine(combine)
    shapes = {tuple(np.shape(rows)) for rows in logits}
    if len(shapes) != 1:
        raise ValueError(
            f"the members of a teacher ensemble give logits of different shapes "
            f"{sorted(shapes)}: they must share their classes (and examples)."
        )
    stacked = jnp.stack([jnp.asarray(rows, jnp.float32) for rows in logits])
    if combine == "logits":
        return jnp.mean(stacked, axis=0)
    log_probabilities = jax.nn.log_softmax(stacked, axis=-1)
    return jax.nn.logsumexp(log_probabilities, axis=0) - math.log(stacked.shape[0])


class EnsembleModel(nn.Module):
    """The members' networks as one module: member *i* (named ``names[i]``) runs on
    ``preprocesses[i](images)`` from the raw images, and the members' logits combine
    (:func:`combine_logits`) into the one output ``"logits"``."""

    members: tuple[nn.Module, ...]
    names: tuple[str, ...]
    preprocesses: tuple[Callable, ...]
    combine: str = "logits"

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        logits = [
            member.clone(parent=self, name=name)(preprocess(images), train=train)["logits"]
            for member, name, preprocess in zip(
                self.members, self.names, self.preprocesses, strict=True
            )
        ]
        return {"logits": combine_logits(logits, self.combine)}


def _raw(images):
    """The identity: an ensemble's members preprocess the raw images themselves."""
    return images


class EnsembleOnlineTeacher(OnlineTeacher):
    """An :class:`OnlineTeacher` running a :class:`EnsembleModel`, which refuses any
    output but ``"logits"``."""

    def outputs(self, variables: Any, images: jax.Array, names: tuple[str, ...]) -> dict:
        check_outputs(names)
        return super().outputs(variables, images, names)


def check_outputs(names: Sequence[str]) -> None:
    """Only ``"logits"`` is defined for an ensemble."""
    others = [name for name in names if name != "logits"]
    if others:
        raise ValueError(
            f"a teacher ensemble gives only the output 'logits' (its members may have "
            f"different architectures), not {', '.join(map(repr, others))}: use an "
            "objective that reads the teacher's logits alone."
        )


def _check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}.")


@dataclasses.dataclass
class TeacherEnsemble:
    """Trained teachers taught as one (see the module docstring).

    It gives what :func:`kdjax.runs.train_run` reads from a teacher:
    :attr:`fingerprint`, :meth:`online` and :meth:`outputs`. No one
    :class:`~kdjax.runs.spec.RunSpec` trains an ensemble, so it has no ``spec`` and no
    ``run_dir``: :attr:`specs` gives its members' specs (for a results record), and its
    stores are its members'. A member trained as a population (one teacher per student)
    cannot join: the ensemble is one teacher for every student.
    """

    members: Sequence[Teacher]
    combine: str = "logits"
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.members = tuple(self.members)
        _check_combine(self.combine)
        if not self.members:
            raise ValueError("a teacher ensemble needs at least one member.")
        population = [member.spec.role for member in self.members if member.per_member]
        if population:
            raise ValueError(
                f"teacher(s) {', '.join(map(repr, population))} trained as a population "
                "(one teacher per student) cannot join a teacher ensemble, which teaches "
                "every student alike; ensemble single teachers (one seed each)."
            )

    @property
    def per_member(self) -> bool:
        """Never: an ensemble is one teacher for every student."""
        return False

    @property
    def specs(self) -> tuple[RunSpec, ...]:
        """The members' specs, in order."""
        return tuple(member.spec for member in self.members)

    @property
    def names(self) -> tuple[str, ...]:
        """Each member's name in :attr:`variables`: ``member<i>_<role>``."""
        return tuple(f"member{i}_{member.spec.role}" for i, member in enumerate(self.members))

    @property
    def fingerprint(self) -> str:
        """A hash of the combine mode and the members' fingerprints, in order."""
        if "fingerprint" not in self._cache:
            identity = {
                "combine": self.combine,
                "members": [member.fingerprint for member in self.members],
            }
            digest = hashlib.blake2b(json.dumps(identity).encode(), digest_size=8)
            self._cache["fingerprint"] = digest.hexdigest()
        return self._cache["fingerprint"]

    @property
    def model(self) -> EnsembleModel:
        """Every member as one module, on raw images (each member preprocesses them)."""
        return EnsembleModel(
            members=tuple(member.model for member in self.members),
            names=self.names,
            preprocesses=tuple(preprocess_of(member.spec) for member in self.members),
            combine=self.combine,
        )

    @property
    def variables(self) -> dict:
        """``{collection: {member name: that member's variables}}`` for :attr:`model`."""
        variables: dict = {}
        for name, member in zip(self.names, self.members, strict=True):
            for collection, tree in member.variables.items():
                variables.setdefault(collection, {})[name] = tree
        return variables

    def online(self) -> OnlineTeacher:
        """The ensemble as it runs inside a student's step: every member on the raw
        batch, combined."""
        return EnsembleOnlineTeacher(self.model, self.variables, _raw, per_member=False)

    def outputs(
        self,
        dataset: Dataset,
        names: tuple[str, ...] = ("logits",),
        *,
        splits: tuple[str, ...] = ("train", "test"),
        train_shifts: int = 0,
        log: Callable[[str], None] = print,
    ) -> dict[str, dict[str, np.ndarray]]:
        """``{"logits": {split: rows}}`` combined from the members' stored logits (each
        member's :meth:`Teacher.outputs`, its store read or written). With
        ``train_shifts=m > 0`` the training split's rows are ``[N, (2m+1)², C]`` and
        the members combine shift by shift."""
        check_outputs(names)
        if not names:
            return {}
        by_split = {}
        for split_name in splits:
            shifts = train_shifts if split_name == "train" else 0
            key = (split_name, shifts, id(getattr(dataset, split_name)))
            if key not in self._cache:
                rows = [
                    member.outputs(
                        dataset, ("logits",), splits=(split_name,), train_shifts=shifts, log=log
                    )["logits"][split_name]
                    for member in self.members
                ]
                self._cache[key] = np.asarray(combine_logits(rows, self.combine))
            by_split[split_name] = self._cache[key]
        return {"logits": by_split}
