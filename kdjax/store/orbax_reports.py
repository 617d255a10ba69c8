"""What orbax reports on its own, kept to what a user needs: a failed checkpoint write is
one :class:`~kdjax.store.integrity.WorkdirError` line, not orbax's log records and the
"Event loop is closed" reports of TensorStore writes that finish after it gave up.

When one array's write fails (disk full), orbax closes the asyncio event loop of the save
while TensorStore still finishes the other writes; each late completion then reports
"RuntimeError: Event loop is closed" through ``sys.unraisablehook`` (a 6-line traceback per
array, some after the save has failed), and orbax logs the failure with its traceback
from three threads.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from typing import Any

from kdjax.store.integrity import is_workdir_failure


def _is_closed_loop_callback(unraisable: Any) -> bool:
    """A TensorStore write that finished after orbax closed the save's event loop."""
    error = unraisable.exc_value
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    frames = [frame.name for frame in traceback.extract_tb(unraisable.exc_traceback)]
    return frames[-2:] == ["call_soon_threadsafe", "_check_closed"]


def drop_closed_loop_callbacks() -> None:
    """Wraps ``sys.unraisablehook`` (once per hook) so it drops only those reports; every
    other unraisable exception still reaches the hook that was in place."""
    hook = sys.unraisablehook
    if getattr(hook, "_kdjax_drops_closed_loop_callbacks", False):
        return

    def filtered(unraisable: Any) -> None:
        if not _is_closed_loop_callback(unraisable):
            hook(unraisable)

    filtered._kdjax_drops_closed_loop_callbacks = True
    sys.unraisablehook = filtered


class _WorkdirFailureRecords(logging.Filter):
    """Drops orbax's log records of a full disk or an unwritable folder while a
    :class:`RunCheckpoints` is open: its WorkdirError says the same in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is logging's to report
            return True
        return not is_workdir_failure(error if error is not None else Exception(text))


_orbax_logger = logging.getLogger("absl")
_records_filter = _WorkdirFailureRecords()
_open_count = 0
_open_guard = threading.Lock()


def quiet_orbax(opening: bool) -> None:
    """Counts open RunCheckpoints; the log filter is on while any is open."""
    global _open_count
    with _open_guard:
        _open_count += 1 if opening else -1
        if opening and _open_count == 1:
            _orbax_logger.addFilter(_records_filter)
        elif not opening and _open_count == 0:
            _orbax_logger.removeFilter(_records_filter)
    if opening:
        drop_closed_loop_callbacks()


@contextlib.contextmanager
def quiet_absl():
    """absl's log records below ERROR are dropped inside the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
