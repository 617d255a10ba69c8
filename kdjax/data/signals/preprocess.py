"""The BioVid pipeline's per-signal preprocessing as small pure numpy/scipy functions.

One channel of one sample goes through, in this order (the pipeline's order):

1. :func:`drop_nans` — missing values are removed (the signal gets shorter);
2. :func:`smooth` — Savitzky–Golay filter, window 5, polynomial order 2;
3. :func:`drop_outliers` — points whose z-score (of the smoothed signal) is
   ``>= 3`` are removed. One-sided, as in the pipeline (``signal[z < 3]``): large
   *negative* excursions stay;
4. :func:`min_max` — rescaled to ``[0, 1]``;
5. :func:`fit_length` — zero-padded at the end or truncated to a common length.

Steps 1 and 3 remove points from inside the signal and splice the rest
together; that is what the pipeline does, and it is kept so results can be compared.
:func:`preprocess` runs steps 1–4 and returns how many points each step dropped,
so a command can report it.

Two corner cases the pipeline leaves undefined are decided here: a constant signal
has no z-scores (its standard deviation is 0), so no point is an outlier and
min–max maps it to all zeros; a signal too short for the smoothing window
(fewer than 5 points) is a :class:`ValueError` — the loader's length rule
rejects such files long before.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.signal import savgol_filter

SMOOTHING_WINDOW = 5
SMOOTHING_ORDER = 2
OUTLIER_Z = 3.0


@dataclasses.dataclass(frozen=True)
class Dropped:
    """How many points of one signal the preprocessing removed, by reason."""

    nans: int
    outliers: int


def drop_nans(signal: np.ndarray) -> tuple[np.ndarray, int]:
    """The signal without its NaNs, and how many there were.

    Example:
      >>> drop_nans(np.array([1.0, np.nan, 3.0]))
      (array([1., 3.]), 1)
    """
    signal = np.asarray(signal, np.float64)
    if signal.ndim != 1:
        raise ValueError(f"signal must be 1-D, got shape {signal.shape}.")
    finite = ~np.isnan(signal)
    return signal[finite], int(signal.size - finite.sum())


def smooth(
    signal: np.ndarray, *, window: int = SMOOTHING_WINDOW, order: int = SMOOTHING_ORDER
) -> np.ndarray:
    """Savitzky–Golay smoothing: each point is replaced by the value at that point of
    the least-squares polynomial of degree ``order`` fitted to the ``window`` points
    around it (``scipy.signal.savgol_filter``, edges fitted by its ``interp`` mode).

    A polynomial of degree ``<= order`` passes through unchanged.

    Example:
      >>> smooth(np.array([0.0, 1.0, 4.0, 9.0, 16.0, 25.0])).round(9)  # a parabola is kept
      array([ 0.,  1.,  4.,  9., 16., 25.])
    """
    signal = np.asarray(signal, np.float64)
    if signal.size < window:
        raise ValueError(
            f"signal has {signal.size} points, fewer than the smoothing window {window}."
        )
    return savgol_filter(signal, window_length=window, polyorder=order)


def drop_outliers(signal: np.ndarray, *, threshold: float = OUTLIER_Z) -> tuple[np.ndarray, int]:
    """Removes the points with ``z = (x − mean) / std >= threshold`` (population std).

    One-sided like the pipeline's ``signal[z < 3]``. A constant signal (std 0) keeps
    every point.

    Example:
      >>> kept, dropped = drop_outliers(np.r_[np.zeros(20), 10.0])
      >>> kept.size, dropped
      (20, 1)
    """
    signal = np.asarray(signal, np.float64)
    spread = signal.std()
    if spread == 0:
        return signal, 0
    keep = (signal - signal.mean()) / spread < threshold
    return signal[keep], int(signal.size - keep.sum())


def min_max(signal: np.ndarray) -> np.ndarray:
    """``(x − min) / (max − min)``, in ``[0, 1]``; a constant signal maps to zeros.

    Example:
      >>> min_max(np.array([2.0, 4.0, 3.0]))
      array([0. , 1. , 0.5])
    """
    signal = np.asarray(signal, np.float64)
    low, high = signal.min(), signal.max()
    if high == low:
        return np.zeros_like(signal)
    return (signal - low) / (high - low)


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
    """Zeros appended up to ``length``, or the first ``length`` points kept.

    Example:
      >>> fit_length(np.array([1.0, 2.0]), 4)
      array([1., 2., 0., 0.])
    """
    signal = np.asarray(signal)
    if signal.size >= length:
        return signal[:length]
    return np.pad(signal, (0, length - signal.size))


def preprocess(
    signal: np.ndarray,
    *,
    window: int = SMOOTHING_WINDOW,
    order: int = SMOOTHING_ORDER,
    threshold: float = OUTLIER_Z,
) -> tuple[np.ndarray, Dropped]:
    """Steps 1–4 of the module docstring on one channel: NaNs dropped, smoothed,
    outliers dropped, min–max scaled. Returns the (possibly shorter) signal and the
    counts of what was dropped; :func:`fit_length` brings it to the common length.

    Example:
      >>> clean, dropped = preprocess(np.r_[np.linspace(0, 1, 50), np.nan])
      >>> float(clean.min()), float(clean.max()), dropped.nans
      (0.0, 1.0, 1)
    """
    signal, nans = drop_nans(signal)
    if np.isinf(signal).any():
        raise ValueError("signal holds infinite values; only finite values and NaN are allowed.")
    smoothed = smooth(signal, window=window, order=order)
    kept, outliers = drop_outliers(smoothed, threshold=threshold)
    return min_max(kept), Dropped(nans=nans, outliers=outliers)
