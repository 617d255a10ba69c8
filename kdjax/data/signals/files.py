"""Finding and reading BioVid-format sample files (one tab-separated CSV per sample).

Two folder layouts are understood (see :func:`find_samples`):

* **pain-level folders** (the BioVid pipeline's): ``DATA/<level>/<any name>.csv`` with
  ``<level>`` one of ``0 1 2 3 4`` or ``BL1 PA1 PA2 PA3 PA4``. The class is the
  folder; the subject is read from the file name when it follows the
  database's pattern (else it is unknown, ``""``).
* **per-subject folders** (the database's own):
  ``DATA/<subject>/<subject>-<class>-<index>_bio.csv``, e.g.
  ``072414_m_23/072414_m_23-PA2-034_bio.csv``; class and subject come from the
  file name, and the subject must match its folder. CSV files directly in
  ``DATA`` are read the same way.

``DATA`` may also be the database's extracted folder (part A's, which holds
``biosignals_filtered/``, ``biosignals_raw/`` and ``video/``): the samples are then
read from its ``biosignals_filtered/`` (:func:`samples_folder`), with the same
relative names as when that folder is given itself.

Files may be gzip-compressed (``.csv.gz``), but one window must not be stored
both ways. Every problem — a missing column, an unparsable or infinite number, an
empty file, a name without a class, an unknown level folder, a window stored as
both ``.csv`` and ``.csv.gz`` — is a :class:`~kdjax.data.DataError` with one line
naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdjax.data import DataError

CHANNELS = ("gsr", "ecg", "emg_trapezius", "emg_corrugator", "emg_zygomaticus")
CLASS_NAMES = ("BL1", "PA1", "PA2", "PA3", "PA4")
SAMPLING_RATE = 512
WINDOW_LENGTH = 2816  # 5.5 s at 512 Hz
# The folder of the database's extracted part A that holds the filtered signals, one
# sub-folder per subject.
FILTERED_FOLDER = "biosignals_filtered"

_LEVEL_FOLDERS = {str(level): level for level in range(5)} | {
    name: level for level, name in enumerate(CLASS_NAMES)
}
_FILE_NAME = re.compile(
    r"^(?P<subject>.+)-(?P<level>BL1|PA[1-4])-(?P<index>\d+)(?:_bio)?\.csv(?:\.gz)?$"
)
_SUFFIXES = (".csv", ".csv.gz")


@dataclasses.dataclass(frozen=True)
class SampleFile:
    """One sample: its file, its class (0–4) and its subject (``""`` if unknown)."""

    path: Path
    relative: str
    label: int
    subject: str


def parse_file_name(name: str) -> tuple[str, int, int] | None:
    """``(subject, class 0–4, index)`` from a database file name, or None.

    Example:
      >>> parse_file_name("072414_m_23-PA2-034_bio.csv")
      ('072414_m_23', 2, 34)
    """
    match = _FILE_NAME.match(name)
    if match is None:
        return None
    return match["subject"], CLASS_NAMES.index(match["level"]), int(match["index"])


def _is_sample(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(_SUFFIXES)


def _sorted_children(directory: Path) -> list[Path]:
    return sorted(child for child in directory.iterdir() if not child.name.startswith("."))


def _from_name(path: Path, root: Path) -> SampleFile:
    parsed = parse_file_name(path.name)
    if parsed is None:
        raise DataError(
            f"{path}: the file name carries no class; "
            "expected SUBJECT-<BL1|PA1..PA4>-INDEX_bio.csv."
        )
    subject, label, _ = parsed
    return SampleFile(path, path.relative_to(root).as_posix(), label, subject)


def samples_folder(data_dir: str | os.PathLike) -> Path:
    """The folder the samples of ``data_dir`` are read from: its
    :data:`FILTERED_FOLDER` when it is the database's extracted folder (it holds one),
    else ``data_dir`` itself.

    Example:
      >>> samples_folder("biovid/PartA")  # doctest: +SKIP
      PosixPath('biovid/PartA/biosignals_filtered')
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: the data folder does not exist or is not a folder.")
    filtered = root / FILTERED_FOLDER
    return filtered if filtered.is_dir() else root


def find_samples(data_dir: str | os.PathLike) -> tuple[str, list[SampleFile]]:
    """Every sample file under ``data_dir``, sorted by relative path, and the layout
    found (``"pain-level"`` or ``"per-subject"``).

    A folder counts as pain-level layout when any sub-folder is named as a class;
    then every sub-folder must be. In the per-subject layout a file whose subject
    differs from its folder's name is an error (a misplaced file). The database's
    extracted folder is read from its ``biosignals_filtered/`` (:func:`samples_folder`);
    relative paths start there.
    """
    root = samples_folder(data_dir)
    folders = [child for child in _sorted_children(root) if child.is_dir()]
    samples: list[SampleFile] = []
    if any(folder.name in _LEVEL_FOLDERS for folder in folders):
        layout = "pain-level"
        for folder in folders:
            if folder.name not in _LEVEL_FOLDERS:
                raise DataError(
                    f"{folder}: unknown pain-level folder; expected one of "
                    f"{' '.join(_LEVEL_FOLDERS)}."
                )
            level = _LEVEL_FOLDERS[folder.name]
            for path in filter(_is_sample, _sorted_children(folder)):
                parsed = parse_file_name(path.name)
                if parsed is not None and parsed[1] != level:
                    raise DataError(
                        f"{path}: named as class {CLASS_NAMES[parsed[1]]} but stored in the "
                        f"folder of class {CLASS_NAMES[level]}."
                    )
                subject = parsed[0] if parsed is not None else ""
                samples.append(SampleFile(path, path.relative_to(root).as_posix(), level, subject))
    else:
        layout = "per-subject"
        for path in filter(_is_sample, _sorted_children(root)):
            samples.append(_from_name(path, root))
        for folder in folders:
            for path in filter(_is_sample, _sorted_children(folder)):
                sample = _from_name(path, root)
                if sample.subject != folder.name:
                    raise DataError(
                        f"{path}: subject {sample.subject} stored in the folder of "
                        f"subject {folder.name}."
                    )
                samples.append(sample)
    if not samples:
        raise DataError(
            f"{root}: no sample files (*.csv) found in pain-level folders (0..4 or BL1, "
            "PA1..PA4) or per-subject folders; for the BioVid database pass its extracted "
            f"folder (the one that holds {FILTERED_FOLDER}/) or that {FILTERED_FOLDER} "
            "folder itself."
        )
    samples.sort(key=lambda sample: sample.relative)
    _refuse_duplicates(samples)
    return layout, samples


def _refuse_duplicates(samples: list[SampleFile]) -> None:
    """One window stored both as ``x.csv`` and ``x.csv.gz`` would count twice."""
    by_window: dict[str, list[SampleFile]] = {}
    for sample in samples:
        by_window.setdefault(sample.relative.removesuffix(".gz"), []).append(sample)
    twice = [copies for copies in by_window.values() if len(copies) > 1]
    if twice:
        plain, packed = twice[0]
        more = f" (and {len(twice) - 1} more such pairs)" if len(twice) > 1 else ""
        raise DataError(
            f"{plain.path} and {packed.path.name} hold the same window twice, plain and "
            f"gzip-compressed{more}; keep one of each pair."
        )


def _first_bad_value(path: Path) -> str:
    """Where the first unparsable number is (re-read as text, only on error)."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    for column in table.columns:
        text = table[column]
        numbers = pd.to_numeric(text, errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & text.notna().to_numpy())
        if bad.size:
            return f"row {bad[0] + 2} column {column}: {text.iloc[bad[0]]!r} is not a number"
    return "a value is not a number"


def _check_columns(path: Path, columns, channels: Sequence[str]) -> None:
    missing = [channel for channel in channels if channel not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(missing)} "
            f"(found {', '.join(map(str, columns))}); is it tab-separated?"
        )


def read_channels(path: str | os.PathLike, channels: Sequence[str]) -> np.ndarray:
    """The columns ``channels`` of one sample file as float64 ``[rows, len(channels)]``.

    Empty fields, ``NaN``/``NA`` and the missing fields of a short row are read as
    NaN (the preprocessing drops and counts them); a row with too many fields is an
    error, and so is a value that is not a number in any column or an infinite value
    (``inf``, ``-inf``) in a column read.

    Example:
      >>> signals = read_channels("072414_m_23-PA2-034_bio.csv", ("gsr",))  # doctest: +SKIP
      >>> signals.shape  # doctest: +SKIP
      (2816, 1)
    """
    path = Path(path)
    try:
        # Every column is parsed (about 15 % slower than the wanted ones alone): only
        # then does pandas refuse a row with too many fields.
        table = pd.read_csv(path, sep="\t", dtype=np.float64)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty.") from None
    except pd.errors.ParserError as error:
        reason = " ".join(str(error).split())
        raise DataError(f"{path}: malformed table ({reason}).") from None
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"{path}: cannot read ({error}).") from None
    except ValueError:
        _check_columns(path, pd.read_csv(path, sep="\t", nrows=0).columns, channels)
        raise DataError(f"{path}: {_first_bad_value(path)}.") from None
    _check_columns(path, table.columns, channels)
    if len(table) == 0:
        raise DataError(f"{path}: a header but no data rows.")
    values = table[list(channels)].to_numpy(np.float64)
    infinite = np.argwhere(np.isinf(values))
    if infinite.size:
        row, column = infinite[0]
        count = f"; the file holds {len(infinite)}" if len(infinite) > 1 else ""
        raise DataError(
            f"{path}: row {row + 2} column {channels[column]}: {values[row, column]} is not "
            f"a finite number{count}; leave a missing value empty or write NaN."
        )
    return values
