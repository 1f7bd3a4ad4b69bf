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
"""

from __future__ import annotations

import os
import warnings

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{YNN_FLAG}=-individual_convolution",)
# jaxlib releases on which CPU_FLAGS were checked to exist.
CHECKED_JAXLIB = "0.10."


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
  return CPU_FLAGS
