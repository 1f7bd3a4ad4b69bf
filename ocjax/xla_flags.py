"""The XLA settings ocjax applies when it is imported.

jax 0.10's XLA:CPU hands every convolution to YNNPACK (the
``__ynn_fusion`` ops of a compiled step). On our 2-core development CPU
that library ran GENESIS-V2's convolutions 2-8x slower than XLA's own
(Eigen) convolutions: 39 against 128 GFLOP/s for the decoder's largest
forward convolution, 13 against 105 GFLOP/s for its kernel gradient
(README, "Speed"). So ``import ocjax`` adds

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

to ``XLA_FLAGS`` (YNNPACK keeps the matmuls), unless

* ``XLA_FLAGS`` already names that flag (yours wins: e.g.
  ``=individual_dot,individual_convolution`` restores jax's default),
* ``OCJAX_XLA_DEFAULTS=0`` is set,
* JAX's backends have already started (XLA reads ``XLA_FLAGS`` once, when
  the first backend starts: import ocjax before running any JAX code), or
* jaxlib is not a 0.10 release (the flag is experimental; another release
  may not know it, and XLA aborts on an unknown flag).

GPUs and TPUs are unaffected (the flag is XLA:CPU's).

Eigen has no float64 convolution: under the flag XLA:CPU compiles a float64
one as a plain loop, 4x slower than YNNPACK's (8.6 against 2.0 s for the
forward pass and both gradients of a 5x5, 64-channel convolution of a
[2, 128, 128, 64] image on the 2-core development CPU; the Slot Attention
parity test's float64 pass took 198 against 23 s). A float64 computation
(the parity tests) gets YNNPACK's convolutions back for its own
compilation with ``jax.jit(fn, compiler_options=compiler_options(dtype))``.

A model may declare XLA:CPU options of its own for its compilations
(``ObjectCentricModel.xla_cpu_options``; APEX drops YNNPACK's reduce
fusions, which slowed its training step by about 18%): `model_options`
gives them to every ``jax.jit`` that compiles the model (training step,
evaluation, sampling, ``segment``), on CPU and only where ocjax's defaults
apply (the same conditions as above: your ``XLA_FLAGS`` still win).
"""

from __future__ import annotations

import os
import warnings

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{YNN_FLAG}=-individual_convolution",)
# jaxlib releases on which CPU_FLAGS were checked to exist.
CHECKED_JAXLIB = "0.10."
# XLA's default value of YNN_FLAG (the flag above removes the convolutions).
YNN_DEFAULT = ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in (
    "INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE"))
# What apply_defaults added to XLA_FLAGS in this process.
applied: tuple[str, ...] = ()


def apply_defaults() -> tuple[str, ...]:
  """Adds `CPU_FLAGS` to ``XLA_FLAGS`` where the module doc says; returns
  the flags added (empty when nothing changed)."""
  if os.environ.get("OCJAX_XLA_DEFAULTS", "1").strip() in ("0", "false"):
    return ()
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags:
    return ()
  import jaxlib  # pylint: disable=g-import-not-at-top
  if not jaxlib.__version__.startswith(CHECKED_JAXLIB):
    return ()
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() == "cpu":
      warnings.warn(
          "ocjax was imported after JAX started its CPU backend, so XLA "
          "keeps YNNPACK's convolutions, which ran ocjax's models up to 2x "
          "slower on CPU: import ocjax before running JAX code, or set "
          f"XLA_FLAGS={' '.join(CPU_FLAGS)} (see ocjax.xla_flags).",
          stacklevel=3)
    return ()
  os.environ["XLA_FLAGS"] = " ".join([flags.strip(), *CPU_FLAGS]).strip()
  global applied
  applied = CPU_FLAGS
  return CPU_FLAGS


def compiler_options(dtype) -> dict[str, str]:
  """``jax.jit``'s ``compiler_options`` for a computation in ``dtype``.

  For float64 on CPU, where `apply_defaults` moved convolutions to Eigen:
  XLA's default (YNNPACK) convolutions for this compilation only (see the
  module doc). Otherwise empty: nothing changes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if (not applied or np.dtype(dtype) != np.float64
      or jax.default_backend() != "cpu"):
    return {}
  return {YNN_FLAG: YNN_DEFAULT}


def model_options(model) -> dict[str, str]:
  """``jax.jit``'s ``compiler_options`` for a computation of ``model``.

  The model's ``xla_cpu_options`` where `apply_defaults` applied ocjax's
  flags (a checked jaxlib, no setting of the user's) and the backend is
  CPU; otherwise empty: nothing changes.
  """
  options = dict(getattr(model, "xla_cpu_options", None) or {})
  if not options or not applied:
    return {}
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    return {}
  return options
