"""The progress display: a tqdm bar on a terminal, periodic log lines elsewhere, and
the device feed's block length that lets it move during short epochs."""

from __future__ import annotations

import pytest

from kdjax.training.feeds import CHECK_EVERY_STEPS, default_block, step_blocks
from kdjax.training.monitor import Progress


def test_terminal_progress_is_a_tqdm_bar_that_advances(capsys):
    progress = Progress("student epoch 1/3", 31, interactive=True, log=pytest.fail)
    for done in (8, 16, 24, 31):
        progress.update(done, 0.5)
        assert progress.bar.n == done
    shown = str(progress.bar)  # what the bar draws (redraws are rate-limited)
    assert "student epoch 1/3" in shown and "31/31" in shown and "loss=0.5000" in shown
    progress.close()
    assert "student epoch 1/3" in capsys.readouterr().err


def test_off_a_terminal_progress_is_periodic_log_lines(capsys):
    lines: list[str] = []
    progress = Progress("teacher epoch 2/5", 100, interactive=False, log=lines.append,
                        every_seconds=0.0)  # fmt: skip
    for done in (50, 100):
        progress.update(done, 0.25)
    progress.close()
    # The epoch's own log line reports the end; progress lines are only for the middle.
    assert lines == ["teacher epoch 2/5: step 50/100, loss 0.2500"]
    assert capsys.readouterr().err == ""

    quiet: list[str] = []
    progress = Progress("teacher", 100, interactive=False, log=quiet.append, every_seconds=60)
    progress.update(50, 0.25)
    assert quiet == []  # short epochs stay silent in logs


@pytest.mark.parametrize(
    ("steps", "block"), [(1, 1), (3, 1), (31, 8), (100, 25), (468, CHECK_EVERY_STEPS)]
)
def test_device_feed_blocks_move_the_bar_several_times_per_epoch(steps, block):
    assert default_block(steps) == block  # the tests run on the CPU backend
    blocks = step_blocks(steps, default_block(steps))
    assert len(blocks) >= min(steps, 4) and blocks[-1][1] == steps
    assert len({last - first for first, last in blocks}) <= 2  # at most two programs
