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

* stride-2 convolutions with even kernels (AST-Seg's U-Net): their
  gradients through XLA are dilated convolutions (the input gradient over a
  zero-interleaved ``dy``), slow on CPU; here they are the gradients of the
  same convolution as a dense stride-1 one over the space-to-depth image
  (`space_to_depth_operands`), the forward pass staying XLA's. The U-Net's
  first downsampling (``[8, 64, 64, 80]``, 4x4 to 128 channels): both
  gradients 27 against 58 ms (2026-12-08). With an odd kernel (AST-Seg's
  background encoder, 5x5) the input gradient is the transposed
  convolution of ``dy`` as col2im (`_odd_kernel_transposes`).

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


def space_to_depth_operands(x: Array, kernel: Array, padding: Padding
                            ) -> tuple[Array, Array]:
  """A stride-2 correlation with an even kernel as a stride-1 one.

  With taps ``t = 2 u + a`` (``a`` in {0, 1}) per axis, ``y[o] = sum_t
  x[2 o + t - lo] k[t] = sum_{u, a} x_a[o + u] k[2 u + a]`` where ``x_a[m] =
  x[2 m + a - lo]``: the padded image's 2x2 blocks stacked as channels
  (space-to-depth, ``[N, H', W', 4 C_in]``, ``a_y, a_x, C_in``) correlated,
  stride 1 and no padding, with the kernel's ``[kh/2, kw/2, 4 C_in, C_out]``
  rearrangement. The same multiply-adds; XLA:CPU's gradients of it are
  dense convolutions, where those of the strided convolution are dilated
  ones (`conv2d`)."""
  kh, kw, c_in, c_out = kernel.shape
  b, h, w, _ = x.shape
  (ly, hy), (lx, hx) = padding
  ho = _output_size(h, kh, 2, ly, hy)
  wo = _output_size(w, kw, 2, lx, hx)
  hp, wp = 2 * (ho + kh // 2 - 1), 2 * (wo + kw // 2 - 1)
  # Pad to exactly the rows and columns the taps read (a negative high
  # padding crops what the floor of the output size leaves unread).
  xp = jax.lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0), (ly, hp - h - ly, 0), (lx, wp - w - lx, 0),
                    (0, 0, 0)))
  xs = xp.reshape(b, hp // 2, 2, wp // 2, 2, c_in).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, hp // 2, wp // 2, 4 * c_in)
  ks = kernel.reshape(kh // 2, 2, kw // 2, 2, c_in, c_out).transpose(
      0, 2, 1, 3, 4, 5).reshape(kh // 2, kw // 2, 4 * c_in, c_out)
  return xs, ks


def _stride2_conv_impl(x, kernel, padding):
  return _lax_conv(x, kernel, padding, (2, 2))


_stride2_conv = jax.custom_vjp(_stride2_conv_impl, nondiff_argnums=(2,))


def _stride2_conv_fwd(x, kernel, padding):
  return _lax_conv(x, kernel, padding, (2, 2)), (x, kernel)


def _stride2_conv_bwd(padding, res, dy):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  if kh % 2 == 0 and kw % 2 == 0:
    def dense(x, kernel):
      xs, ks = space_to_depth_operands(x, kernel, padding)
      return _lax_conv(xs, ks, ((0, 0), (0, 0)), (1, 1))

    _, vjp = jax.vjp(dense, x, kernel)
    return vjp(dy)
  # An odd kernel (`_odd_kernel_transposes`): dx is the transposed
  # convolution of dy, as col2im; dkernel XLA's.
  from ocjax.nn import conv_transpose  # pylint: disable=g-import-not-at-top
  p = padding[0][0]
  dx = conv_transpose.conv_transpose_col2im(
      dy, jnp.swapaxes(kernel, 2, 3), p, 2 - kh + 2 * p)
  _, vjp = jax.vjp(lambda k: _lax_conv(x, k, padding, (2, 2)), kernel)
  (dkernel,) = vjp(dy)
  return dx.astype(x.dtype), dkernel


def _odd_kernel_transposes(x: Array, kernel: Array, padding) -> bool:
  """Whether the input gradient of a stride-2 convolution with an odd
  kernel is a doubling transposed convolution of ``dy`` (square kernel,
  one padding ``p`` on every side, ``k - 2 p`` in {1, 2}, even input):
  `ocjax.nn.conv_transpose.conv_transpose_col2im`. XLA's own input gradient
  (a convolution over a zero-interleaved ``dy``) of AST-Seg's background
  encoder's 5x5 convolutions took 10.2, 11.8 and 34.1 ms on its 32x32,
  16x16 and 8x8 maps (batch 8), col2im 8.1, 9.6 and 3.8 (2026-12-08)."""
  kh, kw = kernel.shape[:2]
  (ly, hy), (lx, hx) = padding
  _, h, w, _ = x.shape
  return (kh == kw and kh % 2 == 1 and ly == hy == lx == hx
          and kh - 2 * ly in (1, 2) and h % 2 == 0 and w % 2 == 0
          and _output_size(h, kh, 2, ly, hy) == h // 2
          and _output_size(w, kw, 2, lx, hx) == w // 2)


_stride2_conv.defvjp(_stride2_conv_fwd, _stride2_conv_bwd)


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
  if cpu and tuple(strides) == (2, 2) and (
      (kh % 2 == 0 and kw % 2 == 0 and 0 <= min(ly, lx))
      or _odd_kernel_transposes(x, kernel, padding)):
    return _stride2_conv(x, kernel, tuple(map(tuple, padding)))
  if (matmul_grad and tuple(strides) == (1, 1)
      and 0 <= min(ly, hy, lx, hx) and max(ly, hy) < kh and max(lx, hx) < kw):
    return _grad_conv(x, kernel, tuple(map(tuple, padding)))
  return _lax_conv(x, kernel, padding, strides)
