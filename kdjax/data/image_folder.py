"""Image-folder data sets (``<root>/{train,test}/<class_name>/*.jpg|png``), CIFAR-10 and
CIFAR-100.

An image folder is read from a directory or straight from a ``.tar`` archive of
one (no extraction needed). Class ids follow the sorted class-folder names unless
a class list is given; within a split, examples are ordered by (class id, file
name) and their ids are their positions in that order, so ids are stable across
machines and between the archive and its extracted copy.

Decoding tens of thousands of JPEGs takes far longer than an epoch of a small
network, so the decoded arrays are cached as one ``.npz`` per source, keyed by the
source's listing (names, sizes and modification times): a changed file is noticed
and the cache is rebuilt; an unchanged source is loaded in about a second. A damaged
cache is decoded again and rewritten, and a cache folder that cannot be written only
costs later runs a decode; each says so in one line (:mod:`kdjax.data.npz_cache`).

Incomplete data stops the load with one line naming the source and what is
missing: a tar archive without its end-of-archive marker (cut short), a class with
images in one split and none in the other, and — for CIFAR-10 (CIFAR-100) — any class
without exactly 5,000 (500) training and 1,000 (100) test images.
``allow_partial=True`` loads such a set anyway, and the Dataset's ``notice``
(recorded in results) says what is missing.

CIFAR-10 and CIFAR-100 are found in this order (see :func:`load_cifar`): ``data_dir``
(an image folder, its ``.tar``, or a prepared TFDS data dir) → a prepared TFDS copy
→ a TFDS download when the network is reachable. There is no embedded fallback:
without data the command stops and says how to provide it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from kdjax import data as _data
from kdjax.data import DataError, Dataset, Split, npz_cache
from kdjax.data.image_listing import (
    SPLITS,
    Listing,
    list_directory,
    list_tar,
    missing_parts,
)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# CIFAR-100's fine labels in their canonical order (the data set's meta file and TFDS),
# which is also the sorted order.
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}
# Each CIFAR data set's TFDS name, display name, classes and images per class.
CIFAR_SETS = {
    "cifar10": ("CIFAR-10", CIFAR10_CLASSES, CIFAR10_PER_CLASS),
    "cifar100": ("CIFAR-100", CIFAR100_CLASSES, {"train": 500, "test": 100}),
}


def cifar_hint(name: str = "cifar10") -> str:
    """How to provide a CIFAR data set (``"cifar10"`` or ``"cifar100"``)."""
    title = CIFAR_SETS[name][0]
    return (
        f"Provide {title} with data_dir=DIR (the commands' --data_dir flag) where DIR is an "
        "image folder "
        "(DIR/train/<class>/*.jpg|png and DIR/test/<class>/*.jpg|png), a .tar of one, or a "
        f"TFDS data dir with {name} prepared in array_record format; or run once with network "
        f"access so TFDS can download {name}."
    )


CIFAR10_HINT = cifar_hint("cifar10")
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$KDJAX_CACHE_DIR``, else ``~/.cache/kdjax``."""
    return Path(os.environ.get("KDJAX_CACHE_DIR", Path.home() / ".cache" / "kdjax"))


# --- Classes -------------------------------------------------------------------------------


def _class_ids(listing: Listing, classes: Sequence[str] | None) -> dict[str, int]:
    found = sorted({name for split in SPLITS for name, _ in listing.files[split]})
    if classes is None:
        return {name: index for index, name in enumerate(found)}
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"the class list has duplicates: {classes}.")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{listing.location}: class folders {unknown} are not in the given class list."
        )
    return {name: index for index, name in enumerate(classes)}


# --- Decoding ------------------------------------------------------------------------------


def _decode(payload: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: cannot decode image ({error}).") from None


def _decode_split(
    listing: Listing, split: str, class_ids: dict[str, int], read: Callable[[str], bytes]
) -> Split:
    entries = listing.files[split]
    labels = np.asarray([class_ids[name] for name, _ in entries], np.int32)

    def decode(member: str) -> np.ndarray:
        return _decode(read(member), f"{listing.location}/{member}")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, [member for _, member in entries], chunksize=256))
    shape = decoded[0].shape
    for (_, member), image in zip(entries, decoded, strict=True):
        if image.shape != shape:
            raise DataError(
                f"{listing.location}/{member}: image is {image.shape[1]}×{image.shape[0]}, "
                f"the first {split} image is {shape[1]}×{shape[0]}; all must be one size."
            )
    images = np.stack(decoded)
    return Split(images, labels, np.arange(len(labels), dtype=np.int64))


def _decode_all(listing: Listing, class_ids: dict[str, int]) -> dict[str, Split]:
    if listing.location.is_dir():

        def read(member: str) -> bytes:
            return (listing.location / member).read_bytes()

        return {split: _decode_split(listing, split, class_ids, read) for split in SPLITS}
    # A tar archive: read every member's bytes in one sequential pass, then decode.
    wanted = {member for split in SPLITS for _, member in listing.files[split]}
    payloads: dict[str, bytes] = {}
    name = None
    try:
        with tarfile.open(listing.location) as handle:
            for member in handle:
                name = member.name
                if name in wanted:
                    payloads[name] = handle.extractfile(member).read()
                    if len(wanted) == len(payloads):
                        break  # past the last wanted member may be a cut-short tail
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{listing.location}: cannot read {name} ({error}).") from None
    return {
        split: _decode_split(listing, split, class_ids, payloads.__getitem__) for split in SPLITS
    }


# --- Cache ---------------------------------------------------------------------------------


def _cache_path(cache_dir: Path, listing: Listing, class_ids: dict[str, int]) -> Path:
    key = hashlib.blake2b(digest_size=8)
    key.update(f"{_CACHE_VERSION}\0{listing.location.resolve()}\0{listing.stamp}".encode())
    key.update(repr(sorted(class_ids.items())).encode())
    return cache_dir / f"image-folder-{listing.location.name}-{key.hexdigest()}.npz"


_WHAT = "decoded-image"


def _read_cache(
    path: Path, listing: Listing, class_ids: dict[str, int], log: Callable[[str], None]
) -> dict[str, Split] | None:
    """The cached splits, or None (saying why) when the cache is absent, unreadable or
    does not match the listing's labels."""

    def check(stored: dict[str, np.ndarray]) -> str | None:
        for split in SPLITS:
            labels = [class_ids[class_name] for class_name, _ in listing.files[split]]
            if not np.array_equal(stored[f"{split}_labels"], labels):
                return f"does not match {listing.location}"
            Split(stored[f"{split}_images"], stored[f"{split}_labels"], stored[f"{split}_ids"])
        return None

    stored = npz_cache.read(
        path, what=_WHAT, rebuild="decoding again to rebuild it", log=log, check=check
    )
    if stored is None:
        return None
    return {
        split: Split(stored[f"{split}_images"], stored[f"{split}_labels"], stored[f"{split}_ids"])
        for split in SPLITS
    }


def _write_cache(path: Path, splits: dict[str, Split], log: Callable[[str], None]) -> None:
    """Writes the cache atomically; a failed write only costs the next run a decode."""
    arrays = {}
    for split, values in splits.items():
        arrays.update(
            {
                f"{split}_images": values.images,
                f"{split}_labels": values.labels,
                f"{split}_ids": values.ids,
            }
        )
    npz_cache.write(path, arrays, what=_WHAT, log=log)


def is_image_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a tar archive or holds ``train/`` and ``test/`` class folders
    (directly or one level down, as in an extracted archive)."""
    path = Path(path)
    if path.is_file():
        return tarfile.is_tarfile(path)
    if not path.is_dir():
        return False
    candidates = [path, *(child for child in path.iterdir() if child.is_dir())]
    return any(all((c / split).is_dir() for split in SPLITS) for c in candidates)


def load_image_folder(
    path: str | os.PathLike,
    *,
    name: str = "image-folder",
    classes: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    per_class: Mapping[str, int] | None = None,
    allow_partial: bool = False,
    log: Callable[[str], None] = print,
) -> Dataset:
    """An image-folder data set from a directory or a ``.tar`` archive of one.

    Args:
      path: a directory holding ``train/<class>/<image>`` and ``test/<class>/<image>``
        (possibly one folder level down), or a tar archive of such a directory.
      name: the data set name recorded in results.
      classes: class names in label order; default: the sorted class folder names.
      cache_dir: where decoded arrays are cached (default :func:`default_cache_dir`).
      use_cache: read and write the decoded-array cache.
      per_class: images each class must have, by split (``{"train": 5000, "test": 1000}``).
      allow_partial: load a set that is cut short, lacks a class in one split or has
        other counts than ``per_class``; the Dataset's ``notice`` then says what is missing.

    Raises :class:`~kdjax.data.DataError` naming the source and what is missing when the
    set is incomplete (unless ``allow_partial``), or a file cannot be read or decoded.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist. " + CIFAR10_HINT)
    listing = list_tar(path) if path.is_file() else list_directory(path)
    class_ids = _class_ids(listing, classes)
    problems = missing_parts(listing, class_ids, per_class)
    notice = None
    if problems:
        if not allow_partial:
            raise DataError(
                f"{path} is incomplete: {'; '.join(problems)}. "
                "Use allow_partial=True to train on it anyway."
            )
        notice = (
            f"PARTIAL DATA SET {path}: {'; '.join(problems)}. Results are not comparable "
            "with those on the complete set."
        )
        log(notice)
    for split in SPLITS:  # examples in (class id, file name) order; ids are positions
        listing.files[split].sort(
            key=lambda item: (class_ids[item[0]], PurePosixPath(item[1]).name)
        )
    cache = _cache_path(Path(cache_dir or default_cache_dir()), listing, class_ids)
    splits = _read_cache(cache, listing, class_ids, log) if use_cache else None
    if splits is not None:
        log(f"Decoded images read from the cache {cache}.")
    else:
        count = sum(len(listing.files[split]) for split in SPLITS)
        log(f"Decoding {count} images from {path} (cached for later runs) ...")
        splits = _decode_all(listing, class_ids)
        if use_cache:
            _write_cache(cache, splits, log)
    return Dataset(
        name=name,
        source="image-folder",
        location=str(path),
        train=splits["train"],
        test=splits["test"],
        num_classes=len(class_ids),
        notice=notice,
    )


def load_cifar(
    name: str = "cifar10",
    data_dir: str | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    allow_partial: bool = False,
    log: Callable[[str], None] = print,
) -> Dataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the
    first source that has it (see the module docstring).

    Image folders must hold exactly the data set's classes (named as in
    :data:`CIFAR10_CLASSES` / :data:`CIFAR100_CLASSES`) with 5,000 training and 1,000
    test images each for CIFAR-10, 500 and 100 for CIFAR-100 (``allow_partial=True``
    accepts fewer, and says so in the Dataset's ``notice``); labels follow the
    canonical order, which is also the sorted order.
    """
    if name not in CIFAR_SETS:
        raise ValueError(f"unknown CIFAR data set {name!r}; known: {sorted(CIFAR_SETS)}")
    title, classes, per_class = CIFAR_SETS[name]
    hint = cifar_hint(name)
    if data_dir is not None:
        location = Path(data_dir)
        if not location.exists():
            raise DataError(f"data_dir {data_dir} does not exist. " + hint)
        if location.is_dir() and _data.tfds_prepared(str(location), name):
            return _data.load_tfds(name, str(location))
        if is_image_folder(location):
            dataset = load_image_folder(
                location,
                name=name,
                classes=classes,
                cache_dir=cache_dir,
                use_cache=use_cache,
                per_class=per_class,
                allow_partial=allow_partial,
                log=log,
            )
            shape = dataset.train.images.shape[1:]
            if shape != (32, 32, 3):
                raise DataError(f"{data_dir}: {title} images are 32×32 RGB, found {shape}.")
            return dataset
        raise DataError(f"data_dir {data_dir} holds no {title}. " + hint)
    if _data.tfds_prepared(None, name):
        return _data.load_tfds(name, None)
    if download and _data.network_reachable(_data.TFDS_PROBE_HOST):
        log(f"Downloading {title} with TFDS ...")
        return _data.load_tfds(name, None, download=True)
    raise DataError(f"no {title} found and no network to download it. " + hint)


def load_cifar10(data_dir: str | None = None, **options) -> Dataset:
    """CIFAR-10: :func:`load_cifar` with ``name="cifar10"`` (same keyword options)."""
    return load_cifar("cifar10", data_dir, **options)
