"""The XLA options kdjax compiles its training and evaluation programs with.

On the CPU, XLA hands convolutions, matrix products and some element-wise work to
YNNPACK by default. For kdjax's networks its forward convolutions take twice XLA's own
time (the CIFAR teacher's 128→64 convolution at batch 128: 185 against 94 ms), so every
method that runs the teacher inside the student's step (attention, hints, ...) trains
1.7× faster without it, and training steps measure the same either way
(docs/performance.md, "XLA's CPU options").
:func:`jit` therefore compiles with YNNPACK off on the CPU:

- only for kdjax's own programs (per compilation, through ``compiler_options``: the
  process's ``XLA_FLAGS`` and other programs are left alone);
- unless ``XLA_FLAGS`` sets ``--xla_cpu_experimental_ynn_fusion_type`` itself (the
  user's choice wins), or ``KDJAX_XLA_DEFAULTS=1`` asks for XLA's own defaults;
- and only where this XLA knows the option (older ones compile as they are).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_OPTION: ""}  # no operation goes to YNNPACK


@functools.cache
def compiler_options() -> dict[str, Any] | None:
    """The options :func:`jit` adds on this backend, or ``None``."""
    if (
        jax.default_backend() != "cpu"
        or YNN_OPTION in os.environ.get("XLA_FLAGS", "")
        or os.environ.get("KDJAX_XLA_DEFAULTS", "") not in ("", "0")
    ):
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(0.0).compile()
    except Exception:  # an XLA (or a jax.jit) without the option
        return None
    return dict(CPU_OPTIONS)


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options`."""
    options = compiler_options()
    if options is None:
        return jax.jit(fun, **kwargs)
    return jax.jit(fun, compiler_options=options, **kwargs)
