"""MHIST (Wei et al. 2021, "A Petri Dish for Histopathology Image Analysis") from its folder.

MHIST's own distribution is a folder holding ``annotations.csv`` and the images, either
in ``images/`` or beside the CSV::

    MHIST/annotations.csv
    MHIST/images/MHIST_aaa.png …

The CSV has one row per image with the columns ``Image Name``, ``Majority Vote Label``
(``HP`` hyperplastic polyp, ``SSA`` sessile serrated adenoma), ``Number of Annotators
who Selected SSA (Out of 7)`` and ``Partition`` (``train`` / ``test``): 3,152 images
of 224×224, 2,175 train and 977 test. Labels are HP = 0, SSA = 1.

Within a split, examples are ordered by image name and their ids are their positions
in that order. The decoded images are cached as one ``.npz`` (as for image folders,
:func:`kdjax.data.image_folder.default_cache_dir`), keyed by the CSV's bytes, every
image's size and modification time, and ``image_size``.

Any problem with the folder stops with a :class:`~kdjax.data.DataError` whose one-line
message names the file: a missing CSV or column, a malformed row, an unknown label or
partition, a vote count that contradicts the majority label, a split without rows or
with rows of one class only (no model can be scored on it), a missing or unreadable
image. A damaged cache is decoded again and rewritten (see :mod:`kdjax.data.npz_cache`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kdjax.data import DataError, Dataset, Split, npz_cache
from kdjax.data.image_folder import default_cache_dir

CSV_NAME = "annotations.csv"
NAME_COLUMN = "Image Name"
LABEL_COLUMN = "Majority Vote Label"
VOTES_COLUMN = "Number of Annotators who Selected SSA (Out of 7)"
PARTITION_COLUMN = "Partition"
CLASSES = ("HP", "SSA")  # label ids 0 and 1
SPLITS = ("train", "test")
ANNOTATORS = 7
_CACHE_VERSION = 1
_WHAT = "decoded MHIST image"


@dataclasses.dataclass(frozen=True)
class MhistDataset(Dataset):
    """A :class:`~kdjax.data.Dataset` plus, per split, aligned with the examples:
    ``ssa_votes[split][i]``, how many of the 7 pathologists chose SSA for example ``i``
    (a soft label: ``ssa_votes / 7``), and ``image_names[split][i]``."""

    ssa_votes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    image_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Row:
    name: str
    label: int
    votes: int
    split: str


def _read_rows(csv_path: Path) -> list[_Row]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{csv_path}: cannot read ({error}).") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [column.strip() for column in reader.fieldnames or []]
    for column in (NAME_COLUMN, LABEL_COLUMN, VOTES_COLUMN, PARTITION_COLUMN):
        if column not in header:
            raise DataError(f"{csv_path}: no column {column!r} (found {header}).")
    reader.fieldnames = header
    rows, seen = [], set()
    for line, record in enumerate(reader, start=2):
        where = f"{csv_path} line {line}"
        if None in record or any(record[column] is None for column in header):
            raise DataError(f"{where}: expected {len(header)} fields.")
        name = record[NAME_COLUMN].strip()
        label, split = record[LABEL_COLUMN].strip(), record[PARTITION_COLUMN].strip()
        if not name:
            raise DataError(f"{where}: empty {NAME_COLUMN!r}.")
        if name in seen:
            raise DataError(f"{where}: image {name!r} is listed twice.")
        if label not in CLASSES:
            raise DataError(f"{where}: unknown label {label!r} (expected one of {CLASSES}).")
        if split not in SPLITS:
            raise DataError(f"{where}: unknown partition {split!r} (expected one of {SPLITS}).")
        try:
            votes = int(record[VOTES_COLUMN].strip())
        except ValueError:
            raise DataError(f"{where}: {VOTES_COLUMN!r} is not an integer.") from None
        if not 0 <= votes <= ANNOTATORS:
            raise DataError(f"{where}: {votes} SSA votes is outside 0…{ANNOTATORS}.")
        if (votes > ANNOTATORS // 2) != (label == "SSA"):
            raise DataError(f"{where}: label {label} contradicts {votes}/7 SSA votes.")
        seen.add(name)
        rows.append(_Row(name, CLASSES.index(label), votes, split))
    if not rows:
        raise DataError(f"{csv_path}: no rows.")
    return rows


def _check_splits(csv_path: Path, rows: list[_Row]) -> None:
    """Each split needs rows of both classes: a model cannot be scored (ROC AUC,
    balanced accuracy) on a split of one class."""
    for split in SPLITS:
        labels = {row.label for row in rows if row.split == split}
        if not labels:
            raise DataError(f"{csv_path}: no {split} rows.")
        if len(labels) == 1:
            count = sum(row.split == split for row in rows)
            (only,) = labels
            raise DataError(
                f"{csv_path}: the {split} split holds only {CLASSES[only]} images ({count} rows); "
                f"each split needs both {' and '.join(CLASSES)} (ROC AUC is undefined on one "
                f"class): check the {PARTITION_COLUMN!r} and {LABEL_COLUMN!r} columns."
            )


def _locate(data_dir: Path) -> tuple[Path, Path]:
    """(CSV path, image directory) of an MHIST folder (or of the CSV path itself)."""
    if data_dir.is_file():
        csv_path, data_dir = data_dir, data_dir.parent
    else:
        csv_path = data_dir / CSV_NAME
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such MHIST folder.")
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: missing; an MHIST folder holds {CSV_NAME} and images/.")
    images = data_dir / "images"
    return csv_path, images if images.is_dir() else data_dir


def _stamp(csv_path: Path, image_dir: Path, rows: list[_Row], image_size: int) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{_CACHE_VERSION}\0{image_size}\0{csv_path.resolve()}\0".encode())
    digest.update(csv_path.read_bytes())
    for row in rows:
        path = image_dir / row.name
        try:
            stat = path.stat()
        except OSError:
            raise DataError(f"{path}: image listed in {csv_path.name} is missing.") from None
        digest.update(f"{row.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot decode image ({error}).") from None


def _decode_all(image_dir: Path, rows: list[_Row], image_size: int) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda row: _decode(image_dir / row.name, image_size), rows))
    return np.stack(decoded)


def load_mhist(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 224,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    log: Callable[[str], None] = print,
) -> MhistDataset:
    """MHIST's train and test splits from its folder (see the module docstring).

    Args:
      data_dir: the folder holding ``annotations.csv`` and ``images/`` (or the images
        beside the CSV), or the CSV's path.
      image_size: images are ``image_size``² RGB; others are resized (bilinear).
        MHIST's own images are 224×224.
      cache_dir: where the decoded arrays are cached (default: the image-folder cache).
      use_cache: read and write that cache.

    Returns:
      An :class:`MhistDataset` (``num_classes=2``; HP = 0, SSA = 1) whose ``ssa_votes``
      hold the annotator counts.

    Example::

        dataset = load_mhist("MHIST")
        dataset.train.images.shape, dataset.ssa_votes["train"][:3]
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    csv_path, image_dir = _locate(Path(data_dir))
    rows = sorted(_read_rows(csv_path), key=lambda row: (SPLITS.index(row.split), row.name))
    _check_splits(csv_path, rows)
    stamp = _stamp(csv_path, image_dir, rows, image_size)
    cache = Path(cache_dir or default_cache_dir()) / f"mhist-{image_size}-{stamp}.npz"
    expected = (len(rows), image_size, image_size, 3)

    def check(stored: dict[str, np.ndarray]) -> str | None:
        images = stored["images"]
        if images.shape != expected or images.dtype != np.uint8:
            return (
                f"does not match {csv_path} ({images.dtype} {images.shape} images, "
                f"uint8 {expected} expected)"
            )
        return None

    stored = (
        npz_cache.read(
            cache, what=_WHAT, rebuild="decoding again to rebuild it", log=log, check=check
        )
        if use_cache
        else None
    )
    if stored is not None:
        images = stored["images"]
        log(f"Decoded MHIST images read from the cache {cache}.")
    else:
        log(f"Decoding {len(rows)} MHIST images from {image_dir} (cached for later runs) ...")
        images = _decode_all(image_dir, rows, image_size)
        if use_cache:
            npz_cache.write(cache, {"images": images}, what=_WHAT, log=log)
    splits, votes, names = {}, {}, {}
    for split in SPLITS:
        chosen = [index for index, row in enumerate(rows) if row.split == split]
        labels = np.asarray([rows[i].label for i in chosen], np.int32)
        splits[split] = Split(images[chosen], labels, np.arange(len(chosen), dtype=np.int64))
        votes[split] = np.asarray([rows[i].votes for i in chosen], np.int32)
        names[split] = [rows[i].name for i in chosen]
    return MhistDataset(
        name="mhist",
        source="mhist-folder",
        location=str(data_dir),
        train=splits["train"],
        test=splits["test"],
        num_classes=len(CLASSES),
        ssa_votes=votes,
        image_names=names,
    )
