"""A teacher that ends at chance (e.g. trained with a learning rate far too large) is
said, since its students then learn nothing from it and the loss check does not stop it."""

from kdjax.runs.execution import warn_at_chance


def test_a_teacher_at_chance_is_said_in_one_line():
    lines = []
    assert warn_at_chance("teacher", [0.098], 10, lines.append)
    assert len(lines) == 1 and "about chance (10 %)" in lines[0] and "9.8 %" in lines[0]


def test_a_teacher_that_learned_is_not_said():
    lines = []
    assert not warn_at_chance("teacher", [0.97], 10, lines.append)
    assert not warn_at_chance("teachers", [0.12, 0.91], 10, lines.append)  # one learned
    assert not warn_at_chance("teacher", [0.31], 5, lines.append)  # above 1.5x chance of 5
    assert lines == []
