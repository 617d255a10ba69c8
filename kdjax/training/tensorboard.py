"""TensorBoard event files for a run (``tensorboardX``; no TensorFlow needed).

Each run writes ``<run_dir>/tensorboard/``: the per-step training loss, the
per-epoch training metrics and test accuracy, the learning rate, epoch time, and
the run's configuration as text and as hyperparameters (the HPARAMS tab, from
``tensorboard/hparams/``, beside the final test accuracy); for a population, each
student's curve under ``student_<i>`` beside their mean. ``tensorboard --logdir
runs/`` then shows every run of a study side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class RunWriter:
    """Writes one run's scalars; a no-op when disabled (or not process 0)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], *, enabled: bool):
        self._writer = None
        self._hparams = {name: _hparam(value) for name, value in config.items()}
        self._final: dict[str, float] = {}
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._writer.add_text(
            "config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```"
        )

    def steps(self, name: str, first_step: int, values: np.ndarray) -> None:
        """``values``: ``[steps]`` or ``[steps, students]`` from ``first_step`` on."""
        if self._writer is None:
            return
        values = np.asarray(values, np.float64)
        for offset, value in enumerate(values):
            self._scalar(name, value, first_step + offset)

    def epoch(self, epoch: int, entry: Mapping[str, Any], learning_rate) -> None:
        """One history entry of the loop (train_*, test_* and seconds) and the
        learning rate of the epoch's last step."""
        if self._writer is None:
            return
        metrics = {k: v for k, v in entry.items() if k.startswith(("train_", "test_"))}
        metrics.update(seconds=entry["seconds"], learning_rate=learning_rate)
        for name, value in metrics.items():
            self._scalar(f"epoch/{name}", np.asarray(value, np.float64), epoch)
        if "test_accuracy" in entry:
            self._final = {"hparam/test_accuracy": float(np.mean(entry["test_accuracy"]))}
        self._writer.flush()

    def _scalar(self, name: str, value: np.ndarray, step: int) -> None:
        value = np.asarray(value, np.float64).reshape(-1)
        self._writer.add_scalar(name, float(value.mean()), step)
        if 1 < value.size <= 16:
            for index, member in enumerate(value):
                self._writer.add_scalar(f"{name}/student_{index}", float(member), step)

    def close(self) -> None:
        if self._writer is None:
            return
        if self._final:  # the run's settings beside its result, one row per run
            self._writer.add_hparams(self._hparams, self._final, name="hparams")
        self._writer.close()


def _hparam(value: Any) -> bool | int | float | str:
    """A config value as TensorBoard takes it (numbers and strings; the rest as JSON)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)
