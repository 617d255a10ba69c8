"""Which epoch a run saved last: ``kdjax_latest.json`` in the run folder, written after
each save reaches the disk, so that a reader finding a newer epoch gone (deleted after
it was saved) says which epoch it restores instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

LATEST_RECORD = "kdjax_latest.json"


def write_latest_record(directory: Path, epoch: int) -> None:
    """Records ``epoch`` as the newest saved into the checkpoint folder ``directory``
    (in the run folder, beside it), so a reader notices when it went missing."""
    temporary = directory.parent / f"{LATEST_RECORD}.tmp"
    temporary.write_text(json.dumps({"epoch": epoch}) + "\n")
    temporary.replace(directory.parent / LATEST_RECORD)


def recorded_latest(directory: Path, log: Callable[[str], None]) -> int | None:
    """The newest epoch saved into the checkpoint folder ``directory``, or None."""
    path = directory.parent / LATEST_RECORD
    try:
        epoch = json.loads(path.read_text())["epoch"]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        log(
            f"{path} is unreadable ({type(error).__name__}); ignored (it only names the newest "
            "epoch saved, to notice one that went missing)."
        )
        return None
    return epoch if isinstance(epoch, int) else None


def say_missing(
    directory: Path,
    restored: int | None,
    accounted: set[int],
    log: Callable[[str], None],
    *,
    verb: str,
) -> None:
    """One line when the newest saved epoch is gone (not merely damaged, which is said)."""
    recorded = recorded_latest(directory, log)
    if recorded is None or recorded in accounted or (restored or 0) >= recorded:
        return
    if restored is None:
        log(
            f"Checkpoint of epoch {recorded} in {directory} is missing (it was saved; its "
            "folder is gone), and no earlier one remains."
        )
    else:
        log(
            f"Checkpoint of epoch {recorded} in {directory} is missing (it was saved; its "
            f"folder is gone): {verb} epoch {restored}, the newest that remains."
        )
