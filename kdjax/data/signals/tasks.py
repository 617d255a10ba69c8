"""The classification tasks the BioVid literature reports, and errors on the pain scale.

The five classes are ordered levels (BL1 = 0 < PA1 < … < PA4 = 4), so besides
accuracy the BioVid pipeline reports how far off a predicted level is: :func:`level_errors`.
The two-class tasks are built from the five-class set by :func:`binary_task`.
"""

from __future__ import annotations

import numpy as np

from kdjax.data.signals.dataset import SignalSet

# task name -> (the five-class labels kept, the new label of each, the new class names)
BINARY_TASKS = {
    "bl1_vs_pa4": ((0, 4), (0, 1), ("BL1", "PA4")),
    "bl1_vs_rest": ((0, 1, 2, 3, 4), (0, 1, 1, 1, 1), ("BL1", "PA1-PA4")),
}


def binary_task(dataset: SignalSet, task: str) -> SignalSet:
    """A two-class task from the five-class set: ``"bl1_vs_pa4"`` keeps baseline
    and the highest level (balanced, the task most papers report);
    ``"bl1_vs_rest"`` keeps everything, baseline against any pain (1 : 4).

    Example:
      >>> pain = binary_task(biovid, "bl1_vs_pa4")  # doctest: +SKIP
      >>> pain.class_names, len(pain)  # doctest: +SKIP
      (('BL1', 'PA4'), 3480)
    """
    if task not in BINARY_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(BINARY_TASKS)}.")
    if dataset.num_classes != 5:
        raise ValueError(f"{task} needs the five-class set, got classes {dataset.class_names}.")
    kept, new_labels, names = BINARY_TASKS[task]
    rows = np.flatnonzero(np.isin(dataset.labels, kept))
    subset = dataset.take(rows)
    mapping = np.full(5, -1, np.int32)
    mapping[list(kept)] = new_labels
    return SignalSet(
        signals=subset.signals,
        labels=mapping[subset.labels],
        subjects=subset.subjects,
        ids=subset.ids,
        names=subset.names,
        subject_names=subset.subject_names,
        channels=subset.channels,
        class_names=names,
        dropped_nans=subset.dropped_nans,
        dropped_outliers=subset.dropped_outliers,
    )


def level_errors(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Mean absolute and root-mean-square error of predicted levels, in levels:
    ``mae = mean |ŷ − y|``, ``rmse = sqrt(mean (ŷ − y)²)`` (sklearn's
    ``mean_absolute_error`` and ``mean_squared_error(...) ** 0.5``, as the pipeline uses).

    Example:
      >>> level_errors(np.array([0, 2, 4]), np.array([0, 3, 1]))
      {'mae': 1.3333333333333333, 'rmse': 1.8257418583505538}
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and predictions {predictions.shape} must be the same "
            "non-empty 1-D shape."
        )
    difference = predictions.astype(np.float64) - labels.astype(np.float64)
    return {
        "mae": float(np.mean(np.abs(difference))),
        "rmse": float(np.sqrt(np.mean(difference**2))),
    }
