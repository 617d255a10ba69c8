"""A run directory's ``config.json``: what the run trains, written once and atomically,
compared on every later use so a folder never mixes two runs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from kdjax.store.integrity import DamagedFileError, workdir_error

CONFIG_FILE = "config.json"


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = "the file is empty" if path.stat().st_size == 0 else f"not valid JSON: {error}"
        raise DamagedFileError(
            f"{path} is damaged ({reason}); if this folder trained the same settings, delete "
            "that file to write it again, else use another run folder (--workdir)."
        ) from None
    if not isinstance(value, dict):
        raise DamagedFileError(f"{path} holds a JSON {type(value).__name__}, not an object.")
    return value


def write_config(run_dir: str | Path, config: dict) -> None:
    """Records what a run trains; refuses to reuse a directory that trained something else.

    Raises ``ValueError`` naming the settings that differ,
    :class:`~kdjax.store.integrity.DamagedFileError` for a garbled ``config.json`` and
    :class:`~kdjax.store.integrity.WorkdirError` when the folder cannot be written.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    # Compare in JSON form: tuples come back from the file as lists.
    config = json.loads(json.dumps(config, default=str))
    if path.exists():
        existing = read_json(path)
        if existing != config:
            changed = sorted(
                key for key in set(existing) | set(config) if existing.get(key) != config.get(key)
            )
            raise ValueError(
                f"{run_dir} holds a run with different settings ({', '.join(changed)}); "
                "use another run folder (--workdir) or delete that folder."
            )
        return
    # Every process of a multi-process job writes the same file: each its own temporary.
    temporary = path.with_name(f"{CONFIG_FILE}.{uuid.uuid4().hex}.tmp")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        temporary.replace(path)  # atomic: a crash never leaves an empty config.json
    except OSError as error:
        failure = workdir_error(error, action="cannot write", path=path)
        if failure is None:
            raise
        raise failure from None


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run directory (DamagedFileError if it is garbled)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a kdjax run directory.")
    return read_json(path)
