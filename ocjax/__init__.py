"""ocjax: unsupervised object-centric models in JAX/Flax."""

from ocjax import xla_flags as _xla_flags

__version__ = "0.1.0"

# XLA:CPU's convolutions from Eigen rather than YNNPACK (see ocjax.xla_flags).
_xla_flags.apply_defaults()
