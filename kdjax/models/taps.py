"""Any intermediate output of any Flax model, by name: what feature-based distillation
methods read from a teacher and a student, through Flax's own mechanisms.

A *tap* is a string naming one output of ``model.apply``:

* a key of the model's output dict (``"logits"``, ``"features"``, ``"feature_map"``);
* a value the model sows into the ``"intermediates"`` collection
  (``self.sow("intermediates", "stage2", x)``), by its path: ``"stage2"``, or
  ``"block/stage2"`` inside a submodule. kdjax's CIFAR ResNets and the notebooks'
  convolutional nets sow their stages under stable names (``stem``, ``stage1`` …);
* the output of any submodule's ``__call__``, by the submodule's path (``"Conv_1"``,
  ``"encoder/Dense_0"``), recorded with ``capture_intermediates`` — no model has to
  be written for a method.

A tap with shell wildcards (``"stage?"``, ``"Conv_*"``) names every match, in
natural order (``stage2`` before ``stage10``), as a tuple: the stages of a
multi-stage loss (AT, NST, VID read one map per stage); taps joined with ``|``
name their values in that order (FSP's ``"stem|stage?"``).

    outputs = taps.apply(model, variables, images, taps=("stage?", "Conv_0"))
    outputs["stage?"]   # (stage1, stage2, stage3)

:func:`apply` is ``model.apply`` plus the taps; :func:`select` reads taps out of an
``"intermediates"`` tree a caller already has (a parent module reads its child's).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

INTERMEDIATES = "intermediates"
_WILDCARDS = re.compile(r"[*?\[]")


def is_sequence_tap(tap: str) -> bool:
    """Whether ``tap`` names a tuple of values: a pattern (one per match) or
    alternatives joined with ``|`` (``"stem|stage?"``: the stem, then every stage)."""
    return bool(_WILDCARDS.search(tap)) or "|" in tap


def _matches(path: str, tap: str) -> bool:
    """``path`` (``a/b/c``) matches ``tap`` as a whole or as its trailing components (so
    a tap names a layer of the student inside a wrapper, e.g. ``student/Conv_0``)."""
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[i:]), tap) for i in range(len(parts)))


def capture_filter(taps: Sequence[str]):
    """A ``capture_intermediates`` filter recording the ``__call__`` outputs of the
    submodules the taps name (and nothing else: no cost for the others)."""
    taps = tuple(taps)

    def wanted(module: nn.Module, method_name: str) -> bool:
        if method_name != "__call__" or not module.path:
            return False
        return any(_matches("/".join(module.path), tap) for tap in taps)

    return wanted


def flatten(intermediates: Mapping) -> dict[str, Any]:
    """``{path: value}`` for every sown or captured value (the last one sown under a
    name; a captured ``__call__`` output under its module's path)."""
    flat: dict[str, Any] = {}

    def walk(tree: Mapping, prefix: tuple[str, ...]) -> None:
        for name, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, (*prefix, name))
            elif isinstance(value, tuple) and value:
                path = prefix if name == "__call__" else (*prefix, name)
                flat["/".join(path)] = value[-1]

    walk(intermediates, ())
    return flat


def _natural(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def select(outputs: Mapping, intermediates: Mapping, taps: Sequence[str]) -> dict[str, Any]:
    """The taps' values: ``outputs[tap]`` for an output, the sown or captured value
    (a tuple of them, in natural order, for a pattern). Raises a ValueError naming
    what is available when a tap matches nothing, or an exact tap matches several."""
    flat = flatten(intermediates)
    found = {}
    for tap in taps:
        if tap in outputs:
            found[tap] = outputs[tap]
            continue
        if "|" in tap:
            parts = select(outputs, intermediates, tap.split("|"))
            found[tap] = tuple(
                value for part in tap.split("|")
                for value in (parts[part] if is_sequence_tap(part) else (parts[part],))
            )  # fmt: skip
            continue
        paths = sorted((path for path in flat if _matches(path, tap)), key=_natural)
        if not paths:
            available = sorted(set(outputs) | set(flat), key=_natural)
            raise ValueError(
                f"no output or intermediate named {tap!r}; available: {', '.join(available)} "
                "(a submodule's output is recorded only when a tap names it)."
            )
        if is_sequence_tap(tap):
            found[tap] = tuple(flat[path] for path in paths)
        elif len(paths) > 1:
            raise ValueError(f"tap {tap!r} names several intermediates: {', '.join(paths)}.")
        else:
            found[tap] = flat[paths[0]]
    return found


def extra_taps(taps: Sequence[str], outputs: Sequence[str] = ()) -> tuple[str, ...]:
    """The taps that are not plain outputs (those need the intermediates)."""
    return tuple(tap for tap in dict.fromkeys(taps) if tap not in outputs)


def apply(
    model: nn.Module,
    variables: Any,
    *args,
    taps: Sequence[str] = (),
    mutable: Sequence[str] | bool = False,
    **kwargs,
):
    """``model.apply(variables, *args, **kwargs)`` whose output dict also holds each tap
    (a model that returns an array gets ``{"logits": array, **taps}``).

    ``mutable`` is ``model.apply``'s; with mutable collections the result is
    ``(outputs, state)`` as Flax returns it (without the intermediates). Taps that are
    output keys cost nothing; the others record the intermediates of this call only.
    """
    collections = [] if mutable is False else list(mutable)
    if not taps:
        return model.apply(variables, *args, mutable=mutable, **kwargs)
    outputs, state = model.apply(
        variables,
        *args,
        mutable=[*collections, INTERMEDIATES],
        capture_intermediates=capture_filter(taps),
        **kwargs,
    )
    state = dict(state)
    intermediates = state.pop(INTERMEDIATES, {})
    if not isinstance(outputs, Mapping):  # a model returning its logits alone
        outputs = {"logits": outputs}
    outputs = {**outputs, **select(outputs, intermediates, taps)}
    return (outputs, state) if collections else outputs


def leaf_shapes(value: Any) -> Any:
    """The shapes of a tap's value (an array or a tuple of arrays)."""
    return jax.tree.map(lambda leaf: tuple(leaf.shape), value)
