"""A trained, frozen teacher and the outputs students learn from: stored once per
(teacher, split) and read by example id, or computed online inside the step.

    teacher = Teacher(spec, result.variables, result.run_dir)
    outputs = teacher.outputs(dataset, ("logits",))       # {"logits": {"train", "test"}}
    student = train_run(student_spec, dataset, workdir, teacher=teacher)

Stores live in ``<teacher run>/soft_targets/``: ``<split>.npz`` for logits,
``<split>-<name>.npz`` for other outputs, with ``-shift<m>`` for the per-shift
stores of a jittered transfer set (rows in the order of
:func:`kdjax.data.augment.every_shift`, the order :func:`kdjax.data.augment.translate_batch`
reads). The teacher's fingerprint covers all its variables, so a retrained
teacher never pairs with stores or students of the old one.

A teacher trained as a population (a spec with several seeds, e.g. one teacher per
cross-validation fold) teaches a population: student *i* learns from teacher *i*,
online (:meth:`Teacher.online`) or from outputs its caller computes per student.

Several teachers teach as one through a :class:`TeacherEnsemble`
(:mod:`kdjax.distill.ensemble`, re-exported here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from kdjax.data import Dataset
from kdjax.data.augment import every_shift, translate
from kdjax.distill import soft_targets
from kdjax.distill.ensemble import TeacherEnsemble as TeacherEnsemble  # re-exported
from kdjax.training import OnlineTeacher, predict
from kdjax.training.recipe import model_of, per_shift_extras, preprocess_of, shift_count_of

if TYPE_CHECKING:  # the run layer sits above this one; the spec is only a type here
    from kdjax.runs.spec import RunSpec


@dataclasses.dataclass
class Teacher:
    """A frozen, trained teacher: the spec it was trained from, its variables (one
    model; for a population spec, a leading axis of one teacher per student) and
    its run directory (where its stores live)."""

    spec: RunSpec
    variables: Any
    run_dir: Path
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def model(self):
        return model_of(self.spec)

    @property
    def per_member(self) -> bool:
        """One teacher per student: the spec trained a population."""
        return self.spec.population is not None

    @property
    def fingerprint(self) -> str:
        if "fingerprint" not in self._cache:
            self._cache["fingerprint"] = soft_targets.params_fingerprint(self.variables)
        return self._cache["fingerprint"]

    def online(self) -> OnlineTeacher:
        """The teacher as it runs inside a student's step (teacher *i* in student *i*'s,
        for a population)."""
        return OnlineTeacher(
            self.model, self.variables, preprocess_of(self.spec), per_member=self.per_member
        )

    def outputs(
        self,
        dataset: Dataset,
        names: tuple[str, ...] = ("logits",),
        *,
        splits: tuple[str, ...] = ("train", "test"),
        train_shifts: int = 0,
        log: Callable[[str], None] = print,
    ) -> dict[str, dict[str, np.ndarray]]:
        """``{name: {split: rows}}``, rows aligned with the split's examples by id, from
        the store (all missing outputs of a split computed in one pass, then kept).

        ``train_shifts=m > 0`` gives the training split's outputs for every
        translation by up to ``m`` pixels, ``[N, (2m+1)², ...]``, in the order of
        :func:`kdjax.data.augment.every_shift`.
        """
        if self.per_member:
            raise ValueError(
                f"teacher {self.spec.role!r} is a population (one teacher per student): it "
                "teaches online, or from outputs computed per student (train_run's "
                "teacher_outputs), not from one store."
            )
        by_split = {}
        for split_name in splits:
            shifts = train_shifts if split_name == "train" else 0
            split = getattr(dataset, split_name)
            key = (names, split_name, shifts, id(split))  # the same split object, this process
            if key not in self._cache:
                self._cache[key] = soft_targets.load_or_compute_outputs(
                    {name: self._store_path(split_name, name, shifts) for name in names},
                    split,
                    teacher_fingerprint=self.fingerprint,
                    compute=partial(self._compute, max_shift=shifts, log=log),
                    log=log,
                )
            by_split[split_name] = self._cache[key]
        return {name: {s: by_split[s][name] for s in splits} for name in names}

    def _store_path(self, split_name: str, name: str, max_shift: int) -> Path:
        # A tap naming a submodule by its path (``encoder/Dense_0``) is one file name.
        stem = split_name if name == "logits" else f"{split_name}-{name.replace('/', '.')}"
        suffix = f"-shift{max_shift}" if max_shift else ""
        return self.run_dir / "soft_targets" / f"{stem}{suffix}.npz"

    def _compute(self, images: np.ndarray, wanted: tuple[str, ...], *, max_shift: int, log):
        model, preprocess = self.model, preprocess_of(self.spec)
        if not max_shift:
            log(f"Computing the teacher's {', '.join(wanted)} for {len(images)} examples ...")
            return predict(
                model, self.variables, images, preprocess=preprocess, output_names=wanted
            )
        offsets = every_shift(max_shift)
        log(
            f"Computing the teacher's {', '.join(wanted)} for {len(images)} examples "
            f"× {len(offsets)} shifts of up to {max_shift} pixel(s) ({len(offsets)} passes; "
            f"the store grows {len(offsets)}× over unshifted outputs) ..."
        )
        per_shift = []
        for offset in offsets:

            def shifted(raw, offset=offset):
                fixed = jnp.broadcast_to(jnp.asarray(offset), (raw.shape[0], 2))
                return preprocess(translate(raw, fixed, max_shift))

            per_shift.append(
                predict(model, self.variables, images, preprocess=shifted, output_names=wanted)
            )
        return {name: np.stack([rows[name] for rows in per_shift], 1) for name in wanted}


def check_stored_outputs(spec: RunSpec, extras: dict[str, Any]) -> None:
    """Stored teacher logits must be ``[N, C]``, or ``[N, shifts, C]`` for a student
    with ``consistent_jitter``; other per-shift outputs need their shift axis."""
    shifts = shift_count_of(spec)
    per_shift = per_shift_extras(spec)
    for key, rows in extras.items():
        shape = np.shape(rows)
        name = key[len("teacher_") :]
        if key in per_shift and (len(shape) < 3 or shape[1] != shifts):
            raise ValueError(
                f"consistent_jitter needs the teacher's {name} for every one of the "
                f"{shifts} shifts ([N, {shifts}, ...], from Teacher.outputs(train_shifts="
                f"{spec.translate_pixels})); got shape {shape}."
            )
        if key == "teacher_logits" and len(shape) != (3 if key in per_shift else 2):
            raise ValueError(
                f"teacher logits of shape {shape}: per-shift logits [N, shifts, C] go with "
                "RunSpec(consistent_jitter=True), plain logits [N, C] without it."
            )
