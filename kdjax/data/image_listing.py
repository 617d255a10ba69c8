"""Listing an image folder or its tar archive, and saying what is missing from it.

A source is ``<root>/{train,test}/<class>/<image>`` as a directory or a tar archive
of one (possibly one folder level down). :func:`list_directory` and :func:`list_tar`
give a :class:`Listing`: each split's (class, file) pairs and a stamp that changes when
any file does. :func:`missing_parts` says what makes it incomplete: a tar archive cut
short (no end-of-archive marker), a class with images in only one split, counts per
class other than expected.

Example::

    listing = list_tar(Path("cifar10.tar"))
    problems = missing_parts(listing, class_ids, {"train": 5000, "test": 1000})
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from kdjax.data import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
_TAR_BLOCK = 512


class Listing:
    """The image files of one source: ``files[split]`` = [(class_name, member_name)]."""

    def __init__(
        self,
        location: Path,
        files: dict[str, list[tuple[str, str]]],
        stamp: str,
        problems: list[str] | None = None,
    ):
        self.location = location
        self.files = files
        self.stamp = stamp  # changes whenever any listed file (or the archive) changes
        self.problems = problems or []  # what makes the source incomplete


def split_parts(relative: PurePosixPath) -> tuple[str, str, str] | None:
    """(split, class, file name) of a path ending ``<split>/<class>/<file>``."""
    parts = relative.parts
    if len(parts) < 3 or parts[-3] not in SPLITS:
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], parts[-1]


def collect_splits(
    entries: list[tuple[str, str]], location: Path
) -> dict[str, list[tuple[str, str]]]:
    """Groups (member name, stamp) entries by split; all must share one prefix."""
    files: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    prefixes = set()
    for member in entries:
        relative = PurePosixPath(member)
        found = split_parts(relative)
        if found is None:
            continue
        split, class_name, _ = found
        prefixes.add(relative.parts[:-3])
        files[split].append((class_name, member))
    if len(prefixes) > 1:
        shown = ", ".join("/".join(p) or "." for p in sorted(prefixes))
        raise DataError(f"{location}: more than one image folder inside ({shown}); pass one.")
    for split in SPLITS:
        if not files[split]:
            raise DataError(
                f"{location}: no images under {split}/<class>/ "
                f"(expected {'|'.join(IMAGE_SUFFIXES)} files in <root>/train/<class>/ "
                "and <root>/test/<class>/)."
            )
    return files


def list_directory(root: Path) -> Listing:
    """The images under ``root``; the stamp covers every file's name, size and mtime."""
    digest = hashlib.blake2b(digest_size=8)
    entries = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if split_parts(PurePosixPath(relative)) is None:
                continue
            stat = path.stat()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            entries.append(relative)
    return Listing(root, collect_splits(entries, root), digest.hexdigest())


def list_tar(archive: Path) -> Listing:
    """The images in a tar archive; one without its end-of-archive marker (cut short)
    is listed up to the cut and the listing's ``problems`` say so."""
    stat = archive.stat()
    problems = []
    try:
        with tarfile.open(archive) as handle:
            members, cut_short = [], False
            while True:
                try:
                    member = handle.next()
                except tarfile.ReadError:  # a member cut short (tarfile drops it)
                    cut_short = True
                    break
                if member is None:
                    break
                if member.isfile():
                    members.append(member)
            # tarfile stops quietly at a header cut short; a complete archive ends in a
            # zero block exactly where the listing stopped.
            if not cut_short:
                handle.fileobj.seek(handle.offset)
                cut_short = handle.fileobj.read(_TAR_BLOCK) != bytes(_TAR_BLOCK)
            if cut_short:
                problems.append(
                    f"the archive has no end-of-archive marker after {len(members)} files "
                    "(it was cut short)"
                )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{archive}: not a readable tar archive ({error}).") from None
    stamp = hashlib.blake2b(
        f"{archive.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode(), digest_size=8
    ).hexdigest()
    names = [member.name for member in members]
    return Listing(archive, collect_splits(names, archive), stamp, problems)


def missing_parts(
    listing: Listing, class_ids: dict[str, int], per_class: Mapping[str, int] | None
) -> list[str]:
    """What is missing: classes absent from one split, counts other than ``per_class``."""
    problems = list(listing.problems)
    counts = {split: {} for split in SPLITS}
    for split in SPLITS:
        for class_name, _ in listing.files[split]:
            counts[split][class_name] = counts[split].get(class_name, 0) + 1
    for split, other in (SPLITS, SPLITS[::-1]):
        absent = sorted(set(counts[other]) - set(counts[split]), key=class_ids.get)
        if absent:
            problems.append(f"{split}/ has no images of {', '.join(absent)} (found in {other}/)")
    for split, wanted in (per_class or {}).items():
        wrong = [
            f"{name} {counts[split].get(name, 0):,}"
            for name in class_ids
            if counts[split].get(name, 0) != wanted
        ]
        if wrong:
            problems.append(f"{split}/ needs {wanted:,} images per class, has {', '.join(wrong)}")
    return problems
