"""2-D convolution (NHWC images, HWIO kernels) computed the way a backend
runs fastest, with the same numbers up to float rounding.

`conv2d` is a correlation with explicit padding, ``y[o] = sum_t x[s o + t -
lo] k[t]`` per axis (``torch.nn.functional.conv2d``'s arithmetic). On CPU,
XLA's convolution is slow in two places that our models hit:

* small maps: a 3x3 convolution of a ``[8, 2, 2, 512]`` map takes ~100 ms
  (~2 ms as a matmul); up to `SMALL_MAP_PIXELS` output pixels the convolution
  runs as im2col (`patches`) and one matmul, differentiated by XLA. (On
  4x4 and 8x8 maps the matmul is also up to 1.3x faster, but float32
  gradients through it drift further from float64: AST-Seg's fixture
  gradients in its alt regime, 3.9e-4 against 1.3e-4 of the largest value
  with XLA's convolution there; so only the pathological case changes.)
* kernel gradients (``matmul_grad``): as the matmul ``patches(x)^T dy``.
  Under jax 0.10's default YNNPACK convolutions the weight-gradient
  convolution reached about half the FLOP/s of that matmul. With XLA's own
  convolutions (`ocjax.xla_flags`) it is as fast or faster on most shapes
  timed alone (GENESIS-V2's decoder: 105 against 69 GFLOP/s), so the
  decoders built on `ConvTranspose2x` (GENESIS-V2, Slot Attention) no
  longer use it; AST-Seg's
  U-Net, glimpse and background networks still do (without it AST-Seg's
  training step took 3.3x as long, for a reason not found yet).

Elsewhere (other backends, larger maps) it is ``lax.conv_general_dilated``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# Output pixels (H_out W_out) up to which a CPU convolution runs as a matmul.
SMALL_MAP_PIXELS = 4

_DN = ("NHWC", "HWIO", "NHWC")
Padding = Sequence[tuple[int, int]]


def _output_size(size: int, k: int, stride: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // stride + 1


def patches(x: Array, window: tuple[int, int], padding: Padding,
            strides: tuple[int, int] = (1, 1)) -> Array:
  """im2col: ``[N, H, W, C] -> [N, H_out, W_out, kh kw C]``, taps row-major
  then channels (the order of an HWIO kernel reshaped to ``[kh kw C, O]``)."""
  (kh, kw), (sy, sx) = window, strides
  (ly, hy), (lx, hx) = padding
  _, h, w, _ = x.shape
  ho, wo = _output_size(h, kh, sy, ly, hy), _output_size(w, kw, sx, lx, hx)
  # Negative padding crops: pad by the positive part, start further in.
  xp = jnp.pad(x, ((0, 0), (max(ly, 0), max(hy, 0)), (max(lx, 0), max(hx, 0)),
                   (0, 0)))
  oy, ox = max(-ly, 0), max(-lx, 0)
  return jnp.concatenate(
      [xp[:, oy + i:oy + i + sy * (ho - 1) + 1:sy,
          ox + j:ox + j + sx * (wo - 1) + 1:sx, :]
       for i in range(kh) for j in range(kw)], axis=-1)


def _lax_conv(x, kernel, padding, strides):
  return jax.lax.conv_general_dilated(x, kernel, tuple(strides),
                                      tuple(map(tuple, padding)),
                                      dimension_numbers=_DN)


def _matmul_conv(x, kernel, padding, strides):
  kh, kw, c_in, c_out = kernel.shape
  cols = patches(x, (kh, kw), padding, strides)
  return jnp.dot(cols, kernel.reshape(kh * kw * c_in, c_out))


def _grad_conv_impl(x, kernel, padding):
  return _lax_conv(x, kernel, padding, (1, 1))


_grad_conv = jax.custom_vjp(_grad_conv_impl, nondiff_argnums=(2,))


def _grad_conv_fwd(x, kernel, padding):
  return _lax_conv(x, kernel, padding, (1, 1)), (x, kernel)


def _grad_conv_bwd(padding, res, dy):
  x, kernel = res
  kh, kw, c_in, c_out = kernel.shape
  (ly, hy), (lx, hx) = padding
  # dL/dx: correlate dy with the flipped, transposed kernel.
  dx = _lax_conv(dy, jnp.swapaxes(kernel[::-1, ::-1], 2, 3),
                 ((kh - 1 - ly, kh - 1 - hy), (kw - 1 - lx, kw - 1 - hx)),
                 (1, 1))
  cols = patches(x, (kh, kw), padding)  # [N, H_out, W_out, kh kw C_in]
  n = cols.shape[0] * cols.shape[1] * cols.shape[2]
  dkernel = jnp.dot(cols.reshape(n, -1).T, dy.reshape(n, -1))
  return dx, dkernel.reshape(kh, kw, c_in, c_out).astype(kernel.dtype)


_grad_conv.defvjp(_grad_conv_fwd, _grad_conv_bwd)


def conv2d(x: Array, kernel: Array, padding: Padding,
           strides: tuple[int, int] = (1, 1), *,
           matmul_grad: bool = False,
           small_maps: bool | None = None) -> Array:
  """``[N, H, W, C_in] * [kh, kw, C_in, C_out] -> [N, H_out, W_out, C_out]``.

  Args:
    padding: ``((lo_y, hi_y), (lo_x, hi_x))``.
    strides: per axis.
    matmul_grad: the kernel gradient as one matmul (stride 1, padding in
      ``[0, k - 1]``).
    small_maps: maps of at most `SMALL_MAP_PIXELS` output pixels as im2col +
      matmul; None: on CPU.
  """
  cpu = jax.default_backend() == "cpu"
  kh, kw = kernel.shape[:2]
  (ly, hy), (lx, hx) = padding
  ho = _output_size(x.shape[1], kh, strides[0], ly, hy)
  wo = _output_size(x.shape[2], kw, strides[1], lx, hx)
  if (cpu if small_maps is None else small_maps) and (
      ho * wo <= SMALL_MAP_PIXELS):
    return _matmul_conv(x, kernel, padding, strides)
  if (matmul_grad and tuple(strides) == (1, 1)
      and 0 <= min(ly, hy, lx, hx) and max(ly, hy) < kh and max(lx, hx) < kw):
    return _grad_conv(x, kernel, tuple(map(tuple, padding)))
  return _lax_conv(x, kernel, padding, strides)
