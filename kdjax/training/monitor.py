"""What the loop shows and checks while it trains: per-block loss checks (a NaN or
infinite loss stops the run naming the step and students), the progress line, and
the per-student summaries of the log lines."""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from kdjax.training import parallel


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class EpochRecord:
    """Collects one epoch's metric blocks, checks their losses and draws progress."""

    def __init__(self, name, epoch, epochs, steps_per_epoch, checkpoints, writer, log=print):
        self.name, self.epoch, self.steps = name, epoch, steps_per_epoch
        self.checkpoints, self.writer = checkpoints, writer
        self.blocks: list[dict] = []
        self.progress = Progress(f"{name} epoch {epoch + 1}/{epochs}", steps_per_epoch, log=log)

    def record(self, done: int, block: dict) -> None:
        """Checks a block of steps' losses (host copies), ending at step ``done``."""
        losses = parallel.to_host(block["loss"])
        first_step = self.epoch * self.steps + done - len(losses) + 1
        self.writer.steps("train/loss", first_step, losses)
        check_finite(
            losses,
            first_step=first_step,
            name=self.name,
            epoch=self.epoch,
            last_saved=self.checkpoints.latest_epoch(),
        )
        self.blocks.append(block)
        self.progress.update(done, float(np.mean(losses[-1])))

    def means(self) -> dict[str, np.ndarray]:
        return {
            key: np.mean(np.concatenate([parallel.to_host(b[key]) for b in self.blocks]), 0)
            for key in self.blocks[0]
        }

    def close(self) -> None:
        self.progress.close()


def rounded(values: np.ndarray) -> list[float]:
    return [round(float(value), 6) for value in np.asarray(values).reshape(-1)]


def describe(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f}±{np.std(values):.4f} (n={len(values)})"


def check_finite(
    losses: np.ndarray, *, first_step: int, name: str, epoch: int, last_saved: int | None
) -> None:
    """Raises :class:`NonFiniteLossError` naming the first step (and students) whose
    loss is not finite; ``losses`` is ``[steps]`` or ``[steps, members]``."""
    finite = np.isfinite(losses)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite.reshape(len(losses), -1).all(axis=1))[0])
    values, which = losses[row], ""
    if np.ndim(values):
        bad_members = np.flatnonzero(~np.isfinite(values)).tolist()
        which = f" for student(s) {bad_members}"
        values = values[bad_members[0]]
    saved = f"epoch {last_saved}" if last_saved else "none"
    raise NonFiniteLossError(
        f"{name}: loss became {values} at step {first_step + row} (epoch {epoch + 1}){which}; "
        f"stopped. Last checkpoint: {saved}. Lower the learning rate or check the inputs."
    )


class Progress:
    """Progress through one epoch: a ``tqdm`` bar on a terminal (process 0 only);
    off a terminal (a log file, CI) a log line at most every ``every_seconds``, so a
    long epoch shows it is alive without flooding short runs' logs."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        log=print,
        interactive: bool | None = None,
        every_seconds: float = 60.0,
    ):
        self.label, self.total, self.log, self.every = label, total, log, every_seconds
        if interactive is None:
            interactive = sys.stderr.isatty()
        main = jax.process_index() == 0
        self.bar = None
        if interactive and main:
            self.bar = tqdm(total=total, desc=label, unit="step", leave=False, file=sys.stderr)
        self.quiet = not main
        self.last = time.monotonic()

    def update(self, done: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if not self.quiet and done < self.total and now - self.last >= self.every:
            self.log(f"{self.label}: step {done}/{self.total}, loss {loss:.4f}")
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
