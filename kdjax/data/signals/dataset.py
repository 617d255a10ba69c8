"""BioVid-format data as arrays: :func:`load_biovid` reads, checks, preprocesses once
and caches; :class:`SignalSet` holds the result.

Length rule: a channel whose count of valid (non-NaN) values differs from the
median count over the whole set by more than ``length_tolerance`` (10 %) is an
error naming the file — BioVid windows are all 2,816 rows, so such a file is a
truncated export or a different recording, not a sample to pad. Within the rule,
signals shortened by the preprocessing are zero-padded at the end (or
truncated) to ``length``: by default the longest preprocessed signal, as in the
seed (2,816 for BioVid).

The cache is one ``.npz`` per data set and settings, named by a fingerprint of
the file list (relative paths, sizes, modification times) and the settings; it
is written atomically and read back when the fingerprint matches. A damaged cache
(cut short, bytes changed, other samples) is read from the sample files again and
rewritten; a cache folder that cannot be written only costs the next run that read
(:mod:`kdjax.data.npz_cache`); each says so in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kdjax.data import DataError, npz_cache
from kdjax.data.signals import preprocess as prep
from kdjax.data.signals.files import (
    CHANNELS,
    CLASS_NAMES,
    SAMPLING_RATE,
    find_samples,
    read_channels,
    samples_folder,
)

LENGTH_TOLERANCE = 0.10
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SignalSet:
    """Preprocessed samples: ``signals[i]`` (``[length, channels]`` float32 in
    ``[0, 1]``, zero-padded) has class ``labels[i]``, subject
    ``subject_names[subjects[i]]`` (``subjects[i] = -1`` when unknown), id ``ids[i]``
    and file ``names[i]``. ``dropped_nans``/``dropped_outliers`` ``[N, channels]``
    count the points the preprocessing removed from each signal.
    """

    signals: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    subject_names: tuple[str, ...]
    channels: tuple[str, ...]
    class_names: tuple[str, ...]
    dropped_nans: np.ndarray
    dropped_outliers: np.ndarray

    def __post_init__(self) -> None:
        if self.signals.dtype != np.float32 or self.signals.ndim != 3:
            raise ValueError(
                f"signals must be float32 [N, length, channels], got "
                f"{self.signals.dtype} {self.signals.shape}."
            )
        count = len(self.signals)
        for name in ("labels", "subjects", "ids", "names"):
            if getattr(self, name).shape != (count,):
                raise ValueError(f"{name} must have shape ({count},).")
        for name in ("dropped_nans", "dropped_outliers"):
            if getattr(self, name).shape != (count, len(self.channels)):
                raise ValueError(f"{name} must have shape ({count}, {len(self.channels)}).")
        if self.signals.shape[2] != len(self.channels):
            raise ValueError(
                f"signals have {self.signals.shape[2]} channels, named {self.channels}."
            )
        if len(np.unique(self.ids)) != count:
            raise ValueError("sample ids must be unique.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, indices: np.ndarray) -> SignalSet:
        """The samples at ``indices`` (e.g. one fold's training part)."""
        indices = np.asarray(indices)
        return dataclasses.replace(
            self,
            signals=self.signals[indices],
            labels=self.labels[indices],
            subjects=self.subjects[indices],
            ids=self.ids[indices],
            names=self.names[indices],
            dropped_nans=self.dropped_nans[indices],
            dropped_outliers=self.dropped_outliers[indices],
        )

    def fingerprint(self) -> str:
        """A short hash of ids, labels, subjects and signals."""
        digest = hashlib.blake2b(digest_size=8)
        for array in (self.ids, self.labels, self.subjects, self.signals):
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        """What a results file records about the data, the preprocessing's drops included."""
        known = self.subjects[self.subjects >= 0]
        nans, outliers = self.dropped_nans.sum(0).tolist(), self.dropped_outliers.sum(0).tolist()
        return {
            "samples": len(self),
            "length": int(self.signals.shape[1]),
            "channels": list(self.channels),
            "class_names": list(self.class_names),
            "class_counts": np.bincount(self.labels, minlength=self.num_classes).tolist(),
            "subjects": len(np.unique(known)),
            "unknown_subject_samples": int((self.subjects < 0).sum()),
            "dropped_nans": dict(zip(self.channels, nans, strict=True)),
            "dropped_outliers": dict(zip(self.channels, outliers, strict=True)),
            "fingerprint": self.fingerprint(),
        }


def _check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    channels = tuple(channels)
    unknown = [channel for channel in channels if channel not in CHANNELS]
    if not channels or unknown or len(set(channels)) != len(channels):
        raise ValueError(
            f"channels must be distinct names from {', '.join(CHANNELS)}; got {channels}."
        )
    return channels


def _cache_key(samples, channels, length, length_tolerance) -> str:
    digest = hashlib.blake2b(digest_size=10)
    settings = (
        _CACHE_VERSION,
        channels,
        length,
        length_tolerance,
        prep.SMOOTHING_WINDOW,
        prep.SMOOTHING_ORDER,
        prep.OUTLIER_Z,
    )
    digest.update(repr(settings).encode())
    for sample in samples:
        stat = sample.path.stat()
        digest.update(f"{sample.relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_WHAT = "preprocessed BioVid"


def _read_cache(path: Path, samples, channels, log: Callable[[str], None]) -> SignalSet | None:
    """The cached set, or None (saying why) when the cache is absent, unreadable or
    does not hold these samples and channels."""

    def build(stored: dict[str, np.ndarray]) -> SignalSet:
        return SignalSet(
            signals=stored["signals"],
            labels=stored["labels"],
            subjects=stored["subjects"],
            ids=stored["ids"],
            names=stored["names"],
            subject_names=tuple(stored["subject_names"].tolist()),
            channels=tuple(stored["channels"].tolist()),
            class_names=tuple(stored["class_names"].tolist()),
            dropped_nans=stored["dropped_nans"],
            dropped_outliers=stored["dropped_outliers"],
        )

    def check(stored: dict[str, np.ndarray]) -> str | None:
        cached = build(stored)
        if (
            cached.names.tolist() != [sample.relative for sample in samples]
            or cached.labels.tolist() != [sample.label for sample in samples]
            or cached.channels != tuple(channels)
        ):
            return "does not match the sample files"
        return None

    rebuild = "reading the sample files again to rebuild it"
    stored = npz_cache.read(path, what=_WHAT, rebuild=rebuild, log=log, check=check)
    return None if stored is None else build(stored)


def _write_cache(path: Path, dataset: SignalSet, log: Callable[[str], None]) -> bool:
    arrays = {
        "signals": dataset.signals,
        "labels": dataset.labels,
        "subjects": dataset.subjects,
        "ids": dataset.ids,
        "names": dataset.names,
        "subject_names": np.asarray(dataset.subject_names, dtype=str),
        "channels": np.asarray(dataset.channels, dtype=str),
        "class_names": np.asarray(dataset.class_names, dtype=str),
        "dropped_nans": dataset.dropped_nans,
        "dropped_outliers": dataset.dropped_outliers,
    }
    return npz_cache.write(path, arrays, what=_WHAT, log=log)


def check_lengths(
    valid_counts: np.ndarray, files: Sequence[str], channels: Sequence[str], tolerance: float
) -> None:
    """Raises :class:`DataError` naming the first file/channel whose valid-value count
    is more than ``tolerance`` (a fraction) away from the median count."""
    median = float(np.median(valid_counts))
    off = np.abs(valid_counts - median) > tolerance * median
    if off.any():
        row, column = np.argwhere(off)[0]
        raise DataError(
            f"{files[row]}: {valid_counts[row, column]} valid {channels[column]} values, but "
            f"the median sample has {median:g}; more than {tolerance:.0%} shorter or longer."
        )


def load_biovid(
    data_dir: str | os.PathLike,
    *,
    channels: Sequence[str] = ("gsr",),
    length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    length_tolerance: float = LENGTH_TOLERANCE,
    log: Callable[[str], None] = print,
) -> SignalSet:
    """Reads every sample under ``data_dir`` (either layout, see
    :mod:`kdjax.data.signals.files`), preprocesses each channel (see
    :mod:`kdjax.data.signals.preprocess`) and returns them as one :class:`SignalSet`,
    sample ids numbered in sorted relative-path order.

    Args:
      data_dir: the data folder, or the database's extracted folder (the one that
        holds ``biosignals_filtered/``, which is then read).
      channels: which columns to read, any of :data:`CHANNELS`.
      length: the common length; default the longest preprocessed signal.
      cache_dir: where to keep the preprocessed arrays (none kept when None).
      length_tolerance: the length rule's fraction (module docstring).
      log: where to report the cache use and timing.

    Example:
      >>> biovid = load_biovid("biovid/PartA/biosignals_filtered")  # doctest: +SKIP
      >>> biovid.signals.shape, biovid.num_classes  # doctest: +SKIP
      ((8700, 2816, 1), 5)
    """
    channels = _check_channels(channels)
    if length is not None and length < 1:
        raise ValueError(f"length must be positive, got {length}.")
    layout, samples = find_samples(data_dir)
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(samples, channels, length, length_tolerance)
        cache_path = Path(cache_dir) / f"biovid-{key}.npz"
        cached = _read_cache(cache_path, samples, channels, log)
        if cached is not None:
            log(f"Read {len(cached)} preprocessed samples from the cache {cache_path}.")
            return cached
    start = time.perf_counter()
    # Each file is preprocessed as soon as it is read (float32), so memory holds
    # about twice the result, not the raw float64 tables of every file.
    files = [str(sample.path) for sample in samples]
    valid_counts = np.zeros((len(samples), len(channels)), np.int64)
    dropped_nans = np.zeros_like(valid_counts)
    dropped_outliers = np.zeros_like(valid_counts)
    cleaned: list[list[np.ndarray]] = []
    too_short: list[str] = []
    for row, path in enumerate(files):
        table = read_channels(path, channels)
        valid_counts[row] = (~np.isnan(table)).sum(0)
        per_channel = []
        for column, channel in enumerate(channels):
            if valid_counts[row, column] < prep.SMOOTHING_WINDOW:
                too_short.append(f"{path}: {valid_counts[row, column]} valid {channel} values")
                per_channel.append(np.zeros(0, np.float32))
                continue
            clean, dropped = prep.preprocess(table[:, column])
            per_channel.append(clean.astype(np.float32))
            dropped_nans[row, column] = dropped.nans
            dropped_outliers[row, column] = dropped.outliers
        cleaned.append(per_channel)
    check_lengths(valid_counts, files, channels, length_tolerance)
    if too_short:
        raise DataError(f"{too_short[0]}, fewer than the smoothing window {prep.SMOOTHING_WINDOW}.")
    if length is None:
        length = max(clean.size for per_channel in cleaned for clean in per_channel)
    signals = np.zeros((len(samples), length, len(channels)), np.float32)
    for row, per_channel in enumerate(cleaned):
        for column, clean in enumerate(per_channel):
            signals[row, :, column] = prep.fit_length(clean, length)
    subject_names = tuple(sorted({sample.subject for sample in samples} - {""}))
    subject_index = {name: index for index, name in enumerate(subject_names)}
    dataset = SignalSet(
        signals=signals,
        labels=np.array([sample.label for sample in samples], np.int32),
        subjects=np.array([subject_index.get(sample.subject, -1) for sample in samples], np.int32),
        ids=np.arange(len(samples), dtype=np.int64),
        names=np.array([sample.relative for sample in samples], dtype=str),
        subject_names=subject_names,
        channels=channels,
        class_names=CLASS_NAMES,
        dropped_nans=dropped_nans,
        dropped_outliers=dropped_outliers,
    )
    log(
        f"Read and preprocessed {len(samples)} samples ({layout} layout, "
        f"{', '.join(channels)} at {SAMPLING_RATE} Hz, length {length}) from "
        f"{samples_folder(data_dir)} "
        f"in {time.perf_counter() - start:.1f} s."
    )
    if cache_path is not None and _write_cache(cache_path, dataset, log):
        log(f"Cached the preprocessed samples in {cache_path}.")
    return dataset
