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

Each phase keeps its own taps only: for a kernel of 4 with padding 1 both phases
have two taps, at offsets shifted by one, so the four 2-D phases are one 2x2
convolution with 4x the output channels (16 taps per input pixel, all useful);
for kernel 5, padding 2, output padding 1 the phases have 3 and 2 taps per
axis: four convolutions of 3x3, 3x2, 2x3 and 2x2 taps (25 taps; the
zero-dilated form multiplies 100). The phases are interleaved.

`conv_transpose_col2im` computes the same sum the other way round: every
input pixel times every tap in one matmul, ``P[i, t] = x[i] kernel[t]``
(``[B, H, W, k, k, C_out]``), then each phase adds its taps' shifted slices
of ``P`` (col2im). Same multiply-adds, no phase kernels cut out of the
kernel (and no transposed copies of them for the input gradient); the
kernel gradient is one matmul ``x^T dP``. On CPU it is faster where the
channels are many and the maps small, or the output channels few
(AST-Seg's background generator; `conv_transpose_col2im`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.nn import conv
from ocjax.nn import init

Array = jax.Array


def _phase_offsets(kernel_size: int, padding: int):
  """Per phase ``a`` in {0, 1}: the input offsets ``d`` (ascending, a
  contiguous range) and their taps ``t = a + p - 2 d``."""
  phases = []
  for a in (0, 1):
    ds = [d for d in range(-kernel_size, kernel_size + 1)
          if 0 <= a + padding - 2 * d < kernel_size]
    phases.append((ds, [a + padding - 2 * d for d in ds]))
  return phases


def _doubling_kernel(kernel: Array, padding: int, output_padding: int,
                     name: str) -> int:
  """The kernel size, checked to give an output of exactly twice the
  input."""
  k = kernel.shape[0]
  if k - 2 * padding + output_padding != 2:
    raise ValueError(
        f"{name} needs an output of exactly twice the input; kernel {k}, "
        f"padding {padding}, output_padding {output_padding} give "
        f"(n-1)*2 + {k - 2 * padding + output_padding}.")
  return k


def _interleave(phases) -> Array:
  """``phases[a_y][a_x]`` ``[B, H, W, C]`` -> ``y [B, 2H, 2W, C]`` with
  ``y[2m + a_y, 2l + a_x]`` = phase ``(a_y, a_x)`` at ``(m, l)``."""
  b, h, w, c = phases[0][0].shape
  y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  return y.reshape(b, 2 * h, 2 * w, c)  # from [B, H, 2, W, 2, C]


def _taps(kernel: Array, axis: int, taps: list[int]) -> Array:
  """``kernel`` at ``taps`` along ``axis`` (a step -2 progression: a strided
  slice and a reversal, no gather)."""
  lo, hi = taps[-1], taps[0]
  return jax.lax.rev(jax.lax.slice_in_dim(kernel, lo, hi + 1, 2, axis),
                     (axis,))


def conv_transpose_subpixel(x: Array, kernel: Array, padding: int,
                            output_padding: int, *,
                            matmul_grad: bool = False) -> Array:
  """Stride-2 transposed convolution as phase convolutions (module doc).

  When both phases of an axis have as many taps and phase 1's offsets are
  phase 0's plus one (even kernels, e.g. 4 with padding 1), the four phases
  are one convolution of window ``k / 2`` with ``4 C_out`` outputs over one
  extra row and column, each phase a shifted crop. Otherwise (e.g. 5 with
  padding 2: 3 and 2 taps) four convolutions, one per phase. (One 3x3
  convolution with ``4 C_out`` outputs over zero-padded taps, 36 taps for
  25, was faster under jax 0.10's default YNNPACK convolutions; with XLA's
  own, which ocjax uses on CPU (`ocjax.xla_flags`), the four convolutions
  made GENESIS-V2's training step 1.1-1.4x faster.) Only the
  configurations whose output is exactly twice the input (``k - 2 p +
  output_padding == 2``) are supported: the usual "upsample by two"
  deconvolution.
  ``matmul_grad``: kernel gradients as matmuls (`ocjax.nn.conv.conv2d`).
  """
  k = _doubling_kernel(kernel, padding, output_padding,
                       "conv_transpose_subpixel")
  kernel = kernel.astype(x.dtype)
  b, h, w, _ = x.shape
  c_in, c_out = kernel.shape[2:]
  (d0, t0), (d1, t1) = _phase_offsets(k, padding)
  if len(d0) == len(d1) and d1[0] == d0[0] + 1:
    # One window-n convolution; output row m' holds phase 0 of row m' and
    # phase 1 of row m' - 1.
    taps = (t0, t1)
    rows = [_taps(kernel, 0, taps[ay]) for ay in (0, 1)]
    phase_k = jnp.stack([jnp.stack([_taps(r, 1, taps[ax]) for ax in (0, 1)],
                                   axis=-2) for r in rows], axis=-3)
    n = len(d0)  # phase_k: [n, n, C_in, 2, 2, C_out]
    pads = ((-d0[0], d1[-1]),) * 2
    y = conv.conv2d(x, phase_k.reshape(n, n, -1, 4 * c_out), pads,
                    matmul_grad=matmul_grad)
    y = y.reshape(b, h + 1, w + 1, 2, 2, c_out)
    phases = [[y[:, ay:ay + h, ax:ax + w, ay, ax] for ax in (0, 1)]
              for ay in (0, 1)]
  else:
    offsets = ((d0, t0), (d1, t1))
    phases = []
    for dy, ty in offsets:
      row = []
      for dx, tx in offsets:
        kern = _taps(_taps(kernel, 0, ty), 1, tx)
        row.append(conv.conv2d(x, kern, ((-dy[0], dy[-1]), (-dx[0], dx[-1])),
                               matmul_grad=matmul_grad))
      phases.append(row)
  return _interleave(phases)


def _tap_matrix(kernel: Array) -> Array:
  """``[k, k, C_in, C_out] -> [C_in, k k C_out]`` (one copy in blocks of
  ``C_out``)."""
  k, _, c_in, c_out = kernel.shape
  return jnp.transpose(kernel.reshape(k * k, c_in, c_out),
                       (1, 0, 2)).reshape(c_in, k * k * c_out)


def tap_products(x: Array, kernel: Array) -> Array:
  """``P[m, t] = x[m] kernel[t]``: ``[M, C_in], [k, k, C_in, C_out] ->
  [M, k k C_out]`` (taps row-major, then channels), one matmul.

  Its gradients are written out so that no matmul transposes ``P``'s
  gradient: left to XLA (jax 0.10, CPU), the kernel gradient of AST-Seg's
  background generator became ``(dP^T x)^T`` with a transposed copy of a
  ``[512, 16000]`` ``dP`` that took 1.3 s, and the training step 3.1x as
  long as with the phase convolutions.
  """
  return _tap_products(kernel.shape, x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tap_products(shape, x, kernel):
  del shape
  return jnp.dot(x, _tap_matrix(kernel))


def _tap_products_fwd(shape, x, kernel):
  del shape
  matrix = _tap_matrix(kernel)
  return jnp.dot(x, matrix), (x, matrix)


def _tap_products_bwd(shape, res, dp):
  k, _, c_in, c_out = shape
  x, matrix = res  # [M, C_in], [C_in, k k C_out]
  dx = jax.lax.dot_general(dp, matrix, (((1,), (1,)), ((), ())))  # [M, C_in]
  dmatrix = jax.lax.dot_general(x, dp, (((0,), (0,)), ((), ())))  # [C_in, n]
  dkernel = jnp.transpose(dmatrix.reshape(c_in, k * k, c_out),
                          (1, 0, 2)).reshape(k, k, c_in, c_out)
  return dx, dkernel


_tap_products.defvjp(_tap_products_fwd, _tap_products_bwd)


def conv_transpose_col2im(x: Array, kernel: Array, padding: int,
                          output_padding: int) -> Array:
  """The stride-2 transposed convolution of `conv_transpose_subpixel` as one
  matmul (`tap_products`) and a col2im (module doc); the same
  configurations.

  Per phase ``a`` (per axis) ``y[2 m + a] = sum_d P[m + d, a + p - 2 d]``.
  AST-Seg's background generator uses it on CPU: its training step with the
  phase convolutions there took 1.29x as long in the curriculum's phase 2
  and about as long in phase 3 (ShapeStacks setting, batch 8); on the
  U-Net's larger maps this form was 1.2-1.4x slower
  (`benchmarks/transposed_convs.py`, README "AST-Seg against its official
  code").
  """
  k = _doubling_kernel(kernel, padding, output_padding,
                       "conv_transpose_col2im")
  b, h, w, c_in = x.shape
  c_out = kernel.shape[3]
  products = tap_products(x.reshape(b * h * w, c_in),
                          kernel.astype(x.dtype)).reshape(
                              b, h, w, k, k, c_out)
  offsets = _phase_offsets(k, padding)
  lo = max(0, -min(ds[0] for ds, _ in offsets))
  hi = max(0, max(ds[-1] for ds, _ in offsets))
  products = jnp.pad(products, ((0, 0), (lo, hi), (lo, hi), (0, 0), (0, 0),
                                (0, 0)))
  phases = []
  for dys, tys in offsets:
    row = []
    for dxs, txs in offsets:
      row.append(sum(products[:, lo + dy:lo + dy + h, lo + dx:lo + dx + w,
                              ty, tx]
                     for dy, ty in zip(dys, tys) for dx, tx in zip(dxs, txs)))
    phases.append(row)
  return _interleave(phases)


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
  `conv_transpose_subpixel` and ``bias [C_out]``. ``subpixel=False``
  computes the plain zero-dilated form (identical numbers, slower on CPU).
  ``matmul_grad`` computes the kernel gradient as one matmul (im2col);
  with XLA's own CPU convolutions (`ocjax.xla_flags`) the convolution's
  own kernel gradient made GENESIS-V2's training step faster (A/B in one
  process, README "Speed"), so it is off by default.
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
  matmul_grad: bool = False
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
      y = conv_transpose_subpixel(x, kernel, self.padding, self.output_padding,
                                  matmul_grad=self.matmul_grad)
    else:
      y = conv_transpose_dilated(x, kernel, self.padding, self.output_padding)
    return y + bias.astype(self.dtype)
