"""Stride-2 transposed convolution without the zero-dilated input.

A transposed convolution with stride 2 (PyTorch's ``ConvTranspose2d``) scatters
each input pixel ``x[i]`` through the kernel into the output:

    y[o] = sum_{i, t : o = 2 i - p + t} x[i] * kernel[t]        (per axis)

XLA on CPU computes it as a convolution over an input with zeros inserted
between the pixels, so three quarters of the multiply-adds hit zeros. Split the
output by the parity ``a`` of its index, ``o = 2 m + a``: each of the two
(per axis) phases is a dense stride-1 correlation of ``x`` with the taps
``kernel[a + p - 2 d]`` at offsets ``d``:

    y[2 m + a] = sum_d x[m + d] * kernel[a + p - 2 d]

All four 2-D phases fit in one convolution of window ``2 r + 1`` whose output
channels are ``(a_y, a_x, C_out)``; a depth-to-space shuffle interleaves them.
For the GENESIS-V2 decoder (kernel 5, padding 2, output padding 1) that is one
3x3 convolution with 4x the output channels: 36 taps per input pixel instead
of the 100 of the dilated form (25 are useful).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import init

Array = jax.Array


def _phase_taps(kernel_size: int, padding: int):
  """Per-axis tap table: ``tap[a, d + r]`` indexes the kernel, -1 if none."""
  # Offsets d with 0 <= a + p - 2 d < k for some phase a in {0, 1}.
  offsets = [d for d in range(-kernel_size, kernel_size + 1)
             if any(0 <= a + padding - 2 * d < kernel_size for a in (0, 1))]
  radius = max(abs(min(offsets)), abs(max(offsets)))
  taps = np.full((2, 2 * radius + 1), -1, np.int32)
  for a in (0, 1):
    for d in range(-radius, radius + 1):
      t = a + padding - 2 * d
      if 0 <= t < kernel_size:
        taps[a, d + radius] = t
  return taps, radius


def subpixel_kernel(kernel: Array, padding: int) -> Array:
  """Rearranges a transposed-conv kernel into the phase convolution's kernel.

  Args:
    kernel: ``[k, k, C_in, C_out]``, ``kernel[ty, tx, i, o]`` being the weight
      that carries input channel ``i`` to output channel ``o`` at tap
      ``(ty, tx)`` of the scatter form above (PyTorch's ``weight[i, o, ty,
      tx]``).
    padding: the transposed convolution's padding ``p``.

  Returns:
    ``[2r+1, 2r+1, C_in, 4 C_out]`` with output channels ordered
    ``(a_y, a_x, C_out)``.
  """
  k = kernel.shape[0]
  taps, radius = _phase_taps(k, padding)
  w = 2 * radius + 1
  # Index tables [w, w, 2, 2] (window y, window x, phase y, phase x).
  ty = np.broadcast_to(taps.T[:, None, :, None], (w, w, 2, 2))
  tx = np.broadcast_to(taps.T[None, :, None, :], (w, w, 2, 2))
  valid = (ty >= 0) & (tx >= 0)
  gathered = kernel[np.maximum(ty, 0), np.maximum(tx, 0)]  # [w,w,2,2,Ci,Co]
  gathered = jnp.where(valid[..., None, None], gathered, 0)
  c_in, c_out = kernel.shape[2:]
  gathered = jnp.transpose(gathered, (0, 1, 4, 2, 3, 5))  # [w,w,Ci,2,2,Co]
  return gathered.reshape(w, w, c_in, 4 * c_out)


def depth_to_space(y: Array) -> Array:
  """``[B, H, W, (2, 2, C)] -> [B, 2H, 2W, C]`` (phase (a_y, a_x) major)."""
  b, h, w, c4 = y.shape
  c = c4 // 4
  y = y.reshape(b, h, w, 2, 2, c)
  y = jnp.transpose(y, (0, 1, 3, 2, 4, 5))  # [B, H, 2, W, 2, C]
  return y.reshape(b, 2 * h, 2 * w, c)


_DN = ("NHWC", "HWIO", "NHWC")


def _patches(x: Array, window: int) -> Array:
  """im2col: ``[N, H, W, C] -> [N, H, W, window^2 C]`` ('SAME' padding)."""
  _, h, w, _ = x.shape
  r = (window - 1) // 2
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(window)
                          for j in range(window)], axis=-1)


def _same_conv(x: Array, kernel: Array) -> Array:
  r = (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((r, r), (r, r)),
                                      dimension_numbers=_DN)


@jax.custom_vjp
def same_conv_matmul_grad(x: Array, kernel: Array) -> Array:
  """Stride-1 'SAME' convolution whose kernel gradient is one matmul.

  The forward pass and the input gradient are XLA convolutions; the kernel
  gradient is ``patches(x)^T dy``. On CPU, XLA's weight-gradient convolution
  runs the decoder's phase convolutions at ~30 GFLOP/s, the matmul at ~70.
  """
  return _same_conv(x, kernel)


def _same_conv_fwd(x, kernel):
  return _same_conv(x, kernel), (x, kernel)


def _same_conv_bwd(res, dy):
  x, kernel = res
  k, _, c_in, c_out = kernel.shape
  # dL/dx: correlate dy with the spatially flipped, transposed kernel.
  dx = _same_conv(dy, jnp.swapaxes(kernel[::-1, ::-1], 2, 3))
  cols = _patches(x, k)  # [N, H, W, k k C_in]
  n = cols.shape[0] * cols.shape[1] * cols.shape[2]
  dkernel = jnp.dot(cols.reshape(n, -1).T, dy.reshape(n, -1))
  return dx, dkernel.reshape(k, k, c_in, c_out).astype(kernel.dtype)


same_conv_matmul_grad.defvjp(_same_conv_fwd, _same_conv_bwd)


def conv_transpose_subpixel(x: Array, kernel: Array, padding: int,
                            output_padding: int, *,
                            matmul_grad: bool = False) -> Array:
  """Stride-2 transposed convolution as phase convolutions (module doc).

  Only the configurations whose output is exactly twice the input
  (``k - 2 p + output_padding == 2``) are supported; that is the usual
  "upsample by two" deconvolution.
  """
  k = kernel.shape[0]
  if k - 2 * padding + output_padding != 2:
    raise ValueError(
        f"conv_transpose_subpixel needs an output of exactly twice the input; "
        f"kernel {k}, padding {padding}, output_padding {output_padding} give "
        f"(n-1)*2 + {k - 2 * padding + output_padding}.")
  phase_kernel = subpixel_kernel(kernel, padding).astype(x.dtype)
  conv = same_conv_matmul_grad if matmul_grad else _same_conv
  return depth_to_space(conv(x, phase_kernel))


def conv_transpose_dilated(x: Array, kernel: Array, padding: int,
                           output_padding: int) -> Array:
  """The same transposed convolution computed the plain way (for tests).

  Zero-dilates the input and correlates it with the spatially flipped kernel,
  which is what PyTorch's ``ConvTranspose2d(stride=2)`` computes.
  """
  k = kernel.shape[0]
  lo = k - 1 - padding
  hi = k - 1 - padding + output_padding
  flipped = kernel[::-1, ::-1].astype(x.dtype)
  return jax.lax.conv_general_dilated(
      x, flipped, window_strides=(1, 1), padding=((lo, hi), (lo, hi)),
      lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ConvTranspose2x(nn.Module):
  """Stride-2 transposed convolution (PyTorch semantics), upsampling by 2.

  Parameters: ``kernel [k, k, C_in, C_out]`` in the scatter layout of
  `subpixel_kernel` and ``bias [C_out]``. ``subpixel=False`` computes the
  plain zero-dilated form (identical numbers, slower on CPU).
  ``matmul_grad`` computes the kernel gradient as one matmul (None: on CPU).
  TensorFlow's ``conv2d_transpose(padding='SAME')`` with k = 5, stride 2
  (pads 3 before and 2 after the dilated input) is ``padding=1,
  output_padding=-1`` in this scatter form, with Keras's ``[k, k, out,
  in]`` kernel transposed to ``[k, k, in, out]``.
  ``kernel_init`` / ``bias_init`` default to PyTorch's initialisation.
  """
  features: int
  kernel_size: int = 5
  padding: int = 2
  output_padding: int = 1
  subpixel: bool = True
  matmul_grad: bool | None = None
  kernel_init: Any = None
  bias_init: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    # torch's ConvTranspose2d computes fan_in from C_out (see ocjax.nn.init).
    default = init.torch_default(self.features * k * k)
    kernel = self.param("kernel", self.kernel_init or default,
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init or default, (self.features,))
    x = x.astype(self.dtype)
    if self.subpixel:
      matmul_grad = self.matmul_grad
      if matmul_grad is None:
        matmul_grad = jax.default_backend() == "cpu"
      y = conv_transpose_subpixel(x, kernel, self.padding, self.output_padding,
                                  matmul_grad=matmul_grad)
    else:
      y = conv_transpose_dilated(x, kernel, self.padding, self.output_padding)
    return y + bias.astype(self.dtype)
