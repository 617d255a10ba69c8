"""Physiological signals in the BioVid Heat Pain format, for the BioVid pain-recognition
pipeline.

* :mod:`kdjax.data.signals.files` — the two folder layouts and reading one CSV;
* :mod:`kdjax.data.signals.preprocess` — the pipeline's per-signal preprocessing;
* :mod:`kdjax.data.signals.dataset` — :func:`load_biovid` (check, preprocess, cache)
  and :class:`SignalSet`;
* :mod:`kdjax.data.signals.tasks` — two-class tasks and level errors (MAE, RMSE).

Example:
  >>> from kdjax import signals
  >>> biovid = signals.load_biovid("DATA", channels=("gsr",), cache_dir="cache")  # doctest: +SKIP
  >>> pain = signals.binary_task(biovid, "bl1_vs_pa4")  # doctest: +SKIP
"""

from kdjax.data.signals.dataset import LENGTH_TOLERANCE, SignalSet, check_lengths, load_biovid
from kdjax.data.signals.files import (
    CHANNELS,
    CLASS_NAMES,
    SAMPLING_RATE,
    WINDOW_LENGTH,
    SampleFile,
    find_samples,
    parse_file_name,
    read_channels,
    samples_folder,
)
from kdjax.data.signals.preprocess import (
    Dropped,
    drop_nans,
    drop_outliers,
    fit_length,
    min_max,
    preprocess,
    smooth,
)
from kdjax.data.signals.tasks import BINARY_TASKS, binary_task, level_errors

__all__ = [
    "BINARY_TASKS",
    "CHANNELS",
    "CLASS_NAMES",
    "LENGTH_TOLERANCE",
    "SAMPLING_RATE",
    "WINDOW_LENGTH",
    "Dropped",
    "SampleFile",
    "SignalSet",
    "binary_task",
    "check_lengths",
    "drop_nans",
    "drop_outliers",
    "find_samples",
    "fit_length",
    "level_errors",
    "load_biovid",
    "min_max",
    "parse_file_name",
    "preprocess",
    "read_channels",
    "samples_folder",
    "smooth",
]
