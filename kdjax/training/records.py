"""What :func:`kdjax.training.fit` takes and gives, as records.

* :class:`Training` — what is trained and how one step updates it;
* :class:`TrainingData` — the splits and the arrays aligned with the training rows;
* :class:`Plan` — how long, with which seeds and hyperparameters, and (for the
  folds of a cross-validation) which rows each student uses (:class:`Folds`);
* :class:`Run` — the run's name, directory and identifying settings;
* :class:`Execution` — how the run trains, none of which changes its result;
* :class:`FitResult` — what the run produced.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from kdjax.data import Split
from kdjax.distill.objectives import Objective
from kdjax.training.members import Members
from kdjax.training.step import OnlineTeacher
from kdjax.types import Augment, Constraint, Hyperparams, Preprocess, Schedule


@dataclasses.dataclass(frozen=True)
class Training:
    """What is trained and how one step updates it.

    ``frozen`` lists parameter-path patterns that never change (use an optimizer
    from ``make_optimizer(frozen=...)`` with the same patterns, so they get no
    optimizer state); ``initial_variables`` start the model from given (e.g.
    pretrained) variables; ``teacher`` computes the teacher outputs inside the step.
    """

    model: nn.Module
    objective: Objective
    optimizer: optax.GradientTransformation
    preprocess: Preprocess
    augment: Augment | None = None
    constraint: Constraint | None = None
    schedule: Schedule | None = None
    teacher: OnlineTeacher | None = None
    frozen: tuple[str, ...] = ()
    initial_variables: Any = None
    # initial_variables carry a leading student axis: student i starts from entry i.
    initial_per_member: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The training and test splits, and ``extras``: arrays aligned with the training
    split (row ``i`` belongs to example ``train.ids[i]``), e.g. stored teacher logits,
    gathered with the same indices as the images."""

    train: Split
    test: Split
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def check(self, batch_size: int) -> None:
        train, test = self.train, self.test
        if train.images.shape[1:] != test.images.shape[1:]:
            raise ValueError(
                f"test inputs of shape {test.images.shape[1:]} differ from the training "
                f"inputs' {train.images.shape[1:]}."
            )
        if batch_size > len(train):
            raise ValueError(
                f"batch size {batch_size} is larger than the training set ({len(train)})."
            )
        for key, array in self.extras.items():
            if len(array) != len(train):
                raise ValueError(
                    f"train_extras[{key!r}] has {len(array)} rows for "
                    f"{len(train)} training examples."
                )

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything a batch gathers, by name: images, labels, ids, row positions
        (for the heads of methods that keep a memory per example) and the extras."""
        return {
            "images": self.train.images,
            "labels": self.train.labels,
            "ids": self.train.ids,
            "rows": np.arange(len(self.train), dtype=np.int32),
            **self.extras,
        }


@dataclasses.dataclass(frozen=True, eq=False)
class Folds:
    """Which rows each student of a population uses: the folds of a cross-validation,
    all trained in one program.

    ``train[i]`` are student ``i``'s rows of the training split (positions): it walks
    them in its own order, and an epoch has as many steps as the smallest student's
    rows fill. ``test[i]`` are its rows of the test split, the held-out fold it is
    scored on (None: every student is scored on the whole test split).
    """

    train: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...] | None = None

    @classmethod
    def of(cls, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> Folds:
        """From ``(train rows, test rows)`` pairs, as :mod:`kdjax.data.folds` gives them."""
        return cls(tuple(train for train, _ in folds), tuple(test for _, test in folds))

    def stack(self, split: Split) -> tuple[Split, Folds]:
        """Every student's training rows of ``split`` copied one student after another
        (ids made unique per copy), and the folds over the copy: a row that several
        students train on gets one copy each, so that per-student extras (fold *i*'s
        own teacher logits) can sit beside it. The test rows stay as they are."""
        sizes = [len(rows) for rows in self.train]
        offsets = np.cumsum([0, *sizes])
        every = np.concatenate(self.train)
        copy = np.repeat(np.arange(len(sizes)), sizes)
        ids = split.ids[every] + copy * (int(split.ids.max()) + 1)
        stacked = Split(split.images[every], split.labels[every], ids.astype(np.int64))
        rows = tuple(np.arange(offsets[i], offsets[i + 1]) for i in range(len(sizes)))
        return stacked, Folds(rows, self.test)

    def fingerprint(self) -> str:
        """Sixteen hex digits naming the rows of every fold."""
        digest = hashlib.blake2b(digest_size=8)
        for part in (self.train, self.test or ()):
            for rows in part:
                digest.update(np.asarray(rows, np.int64).tobytes() + b"|")
            digest.update(b"#")
        return digest.hexdigest()

    def test_masks(self, members: Members, data: TrainingData) -> np.ndarray | None:
        """``[students, test examples]`` bools from each student's held-out rows,
        after checking there is one fold per student and (when the two splits are
        one) that no student is scored on rows it trained on."""
        if len(self.train) != members.count:
            raise ValueError(f"{len(self.train)} training folds for {members.count} students.")
        if self.test is None:
            return None
        if len(self.test) != members.count or not members.stacked:
            raise ValueError("the test folds need one entry per student of a population.")
        masks = np.zeros((members.count, len(data.test)), bool)
        for index, rows in enumerate(self.test):
            masks[index, np.asarray(rows)] = True
        if data.train is data.test:
            for index, rows in enumerate(self.train):
                if masks[index, np.asarray(rows)].any():
                    raise ValueError(f"student {index}'s training and test rows overlap.")
        return masks


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run trains for: ``epochs`` of ``batch_size`` examples per step, from
    ``seed`` (parameters and dropout; a list of seeds trains a population,
    :class:`kdjax.training.members.Members`) with ``hyperparams`` (traced; a vector
    gives every student its own value). ``data_seed`` fixes the example order
    (default: the first seed); ``folds`` gives every student its own rows."""

    epochs: int
    batch_size: int
    seed: int | Sequence[int]
    hyperparams: Hyperparams
    data_seed: int | None = None
    folds: Folds | None = None

    def members(self, strategy: str) -> Members:
        return Members.of(self.seed, strategy, own_batches=self.folds is not None)


@dataclasses.dataclass(frozen=True)
class Run:
    """Which run this is: ``name`` in its log lines, ``directory`` for its checkpoints,
    and ``config``, the settings that identify it (written to ``config.json``; a
    directory that trained something else is refused)."""

    name: str
    directory: Path
    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))


@dataclasses.dataclass(frozen=True)
class Execution:
    """How (not what) a run trains: none of it changes the result beyond
    floating-point reassociation, so a run may resume with other values.

    ``feed``: see :func:`kdjax.training.feeds.resolve_feed`; ``mesh``: data-parallel
    training (:func:`kdjax.training.parallel.data_mesh`); ``population_strategy``: see
    :func:`kdjax.training.step.population_step`; ``tensorboard``: write event files
    in ``<run_dir>/tensorboard`` (:mod:`kdjax.training.tensorboard`).
    """

    feed: str = "auto"
    mesh: jax.sharding.Mesh | None = None
    steps_per_call: int | None = None
    population_strategy: str = "auto"
    eval_batch_size: int = 1000
    checkpoint_every: int = 1
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")


@dataclasses.dataclass
class FitResult:
    """What one training run produced. Per-epoch metrics and ``test_accuracy`` hold
    one value per student (a list of one for a single run); ``variables`` has a
    leading student axis for a population; ``config`` is the run's identifying
    settings (its ``config.json``).

    ``compile_seconds``: with the host feed, the first step's wall time (compile plus
    one step); with the device feed, the ahead-of-time compiles of the block programs.
    Either way it is inside the first epoch's ``seconds``.
    """

    run_dir: Path
    variables: Any
    members: Members
    history: list[dict]
    test_accuracy: list[float]
    epochs_trained_now: int
    resumed_from_epoch: int
    train_seconds: float
    compile_seconds: float | None
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> Any:
        return self.variables["params"]

    def member_variables(self, index: int = 0) -> Any:
        return self.members.unstack(self.variables, index)

    def summary(self) -> dict:
        rates = [entry["examples_per_second"] for entry in self.history]
        seconds = [entry["seconds"] for entry in self.history]
        return {
            "run_dir": str(self.run_dir),
            "seeds": list(self.members.seeds),
            "test_accuracy": self.test_accuracy,
            "epochs": len(self.history),
            "resumed_from_epoch": self.resumed_from_epoch,
            "train_seconds_this_invocation": round(self.train_seconds, 3),
            "compile_seconds": None
            if self.compile_seconds is None
            else round(self.compile_seconds, 3),
            "mean_epoch_seconds": round(float(np.mean(seconds)), 3) if seconds else None,
            "examples_per_second": round(float(np.median(rates)), 1) if rates else None,
        }
