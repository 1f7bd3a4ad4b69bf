"""Spatial transformer sampling: PyTorch's ``affine_grid`` / ``grid_sample``.

An STN renders a small image (a glimpse ``[G_h, G_w, C]``) into a larger one
(``[H, W, C]``): every output pixel centre ``(x, y)`` (normalised coordinates,
``align_corners=False``: ``x_j = (2 j + 1) / W - 1``) is mapped by a 2x3
matrix ``theta`` to glimpse coordinates ``(u, v) = theta @ (x, y, 1)``, and
the glimpse is read there bilinearly with zero padding: source pixel
``i = ((u + 1) G - 1) / 2``, and each of the four bilinear taps that falls
outside the glimpse contributes 0 (PyTorch's ``grid_sample(mode='bilinear',
padding_mode='zeros', align_corners=False)``).

Two ways to compute it, equal up to float rounding:

* `grid_sample`: the general form (any ``theta``) as a gather of the four
  taps per output pixel.
* `sample_axis_aligned`: for matrices without rotation or shear
  (``theta = [[a, 0, c], [0, d, f]]``, the STNs of SPAIR/SPACE/AST-Seg), ``u``
  depends on the column only and ``v`` on the row only, so bilinear sampling
  is separable: ``out = W_y @ glimpse @ W_x^T`` with ``W_y [H, G_h]`` and
  ``W_x [W, G_w]`` the 1-D interpolation matrices (two taps per row, zero
  where a tap leaves the glimpse). Two small matmuls per object: no gather,
  and XLA compiles it well on any backend (and its gradient is matmuls too).

Both build the interpolation weights from ``floor`` as PyTorch does
(``w_0 = i_1 - i``, ``w_1 = i - i_0``), so values and gradients with
respect to the glimpse and to ``theta`` follow PyTorch's formulas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import layers

Array = jax.Array


def base_coordinates(size: int, dtype=jnp.float32) -> Array:
  """Pixel-centre coordinates of ``affine_grid(align_corners=False)``.

  PyTorch: ``linspace(-1, 1, n) * (n - 1) / n`` in float32 (``(2 j + 1) /
  n - 1`` up to rounding).
  """
  if jnp.dtype(dtype) == jnp.float64:
    r = np.linspace(-1.0, 1.0, size, dtype=np.float64)
    return jnp.asarray(r * (size - 1) / size, dtype)
  r = layers.torch_linspace(-1.0, 1.0, size)
  r = (r * np.float32(size - 1)) / np.float32(size)
  return jnp.asarray(r.astype(np.float32), dtype)


def affine_grid(theta: Array, height: int, width: int) -> Array:
  """``torch.nn.functional.affine_grid(theta, (N, C, H, W))``.

  Args:
    theta: ``[..., 2, 3]``.
  Returns:
    ``[..., H, W, 2]``, the last axis ``(u, v)`` (x first, as PyTorch).
  """
  xs = base_coordinates(width, theta.dtype)
  ys = base_coordinates(height, theta.dtype)
  x = xs[None, :]  # [1, W]
  y = ys[:, None]  # [H, 1]
  t = theta[..., None, None, :, :]  # [..., 1, 1, 2, 3]
  u = t[..., 0, 0] * x + t[..., 0, 1] * y + t[..., 0, 2]
  v = t[..., 1, 0] * x + t[..., 1, 1] * y + t[..., 1, 2]
  return jnp.stack([u, v], axis=-1)


def unnormalize(coord: Array, size: int) -> Array:
  """Normalised coordinate -> source pixel index (``align_corners=False``)."""
  return ((coord + 1) * size - 1) / 2


def grid_sample(image: Array, grid: Array) -> Array:
  """``grid_sample(image, grid, 'bilinear', 'zeros', align_corners=False)``.

  Args:
    image: ``[N, G_h, G_w, C]``.
    grid: ``[N, H, W, 2]`` with ``(u, v)`` in normalised glimpse coordinates.
  Returns:
    ``[N, H, W, C]``.
  """
  n, gh, gw, c = image.shape
  ix = unnormalize(grid[..., 0], gw)
  iy = unnormalize(grid[..., 1], gh)
  ix0 = jax.lax.stop_gradient(jnp.floor(ix))
  iy0 = jax.lax.stop_gradient(jnp.floor(iy))
  ix1, iy1 = ix0 + 1, iy0 + 1
  flat = image.reshape(n, gh * gw, c)

  def tap(iy_t, ix_t):
    inside = (ix_t >= 0) & (ix_t <= gw - 1) & (iy_t >= 0) & (iy_t <= gh - 1)
    xi = jnp.clip(ix_t, 0, gw - 1).astype(jnp.int32)
    yi = jnp.clip(iy_t, 0, gh - 1).astype(jnp.int32)
    index = (yi * gw + xi).reshape(n, -1)  # [N, H W]
    values = jnp.take_along_axis(flat, index[..., None], axis=1)
    values = values.reshape(grid.shape[:-1] + (c,))
    return jnp.where(inside[..., None], values, 0)

  w_nw = (ix1 - ix) * (iy1 - iy)
  w_ne = (ix - ix0) * (iy1 - iy)
  w_sw = (ix1 - ix) * (iy - iy0)
  w_se = (ix - ix0) * (iy - iy0)
  return (tap(iy0, ix0) * w_nw[..., None] + tap(iy0, ix1) * w_ne[..., None]
          + tap(iy1, ix0) * w_sw[..., None] + tap(iy1, ix1) * w_se[..., None])


def interpolation_matrix(coord: Array, size: int) -> Array:
  """1-D bilinear weights with zero padding, ``[..., n] -> [..., n, size]``.

  ``coord`` are normalised source coordinates (``align_corners=False``); row
  ``j`` holds ``i_1 - i`` at ``i_0 = floor(i)`` and ``i - i_0`` at
  ``i_0 + 1`` (columns outside ``[0, size)`` are dropped: zero padding).
  """
  i = unnormalize(coord, size)
  i0 = jax.lax.stop_gradient(jnp.floor(i))
  frac = i - i0  # PyTorch: w_1 = i - i_0, w_0 = i_1 - i = (i_0 + 1) - i
  w0 = (i0 + 1) - i
  cols = jnp.arange(size, dtype=coord.dtype)
  at0 = (cols == i0[..., None]).astype(coord.dtype)
  at1 = (cols == i0[..., None] + 1).astype(coord.dtype)
  return w0[..., None] * at0 + frac[..., None] * at1


def sample_axis_aligned(image: Array, theta: Array, height: int,
                        width: int) -> Array:
  """`grid_sample(image, affine_grid(theta))` for rotation-free ``theta``.

  Args:
    image: ``[N, G_h, G_w, C]``.
    theta: ``[N, 2, 3]`` with ``theta[:, 0, 1] = theta[:, 1, 0] = 0`` (the
      off-diagonal terms are ignored).
    height, width: the output size.
  Returns:
    ``[N, H, W, C]``.
  """
  _, gh, gw, _ = image.shape
  xs = base_coordinates(width, theta.dtype)
  ys = base_coordinates(height, theta.dtype)
  # As affine_grid computes them (the zero off-diagonal term adds 0).
  u = theta[:, 0, 0, None] * xs + theta[:, 0, 2, None]  # [N, W]
  v = theta[:, 1, 1, None] * ys + theta[:, 1, 2, None]  # [N, H]
  wx = interpolation_matrix(u, gw)  # [N, W, G_w]
  wy = interpolation_matrix(v, gh)  # [N, H, G_h]
  rows = jnp.einsum("nhg,ngfc->nhfc", wy, image)  # [N, H, G_w, C]
  return jnp.einsum("nhfc,nwf->nhwc", rows, wx)


# ------------------------------------------------------------------ boxes
# A box ``(s_x, s_y, t_x, t_y)`` covers ``[t - s, t + s]`` of the normalised
# image (``s`` is the fraction of the image's half-extent; SCALOR's
# ``z_where``). Reading a box out of an image uses ``theta = [[s_x, 0, t_x],
# [0, s_y, t_y]]``; writing a glimpse into an image uses its inverse.


def crop_boxes(image: Array, boxes: Array, size: int) -> Array:
  """Reads ``N`` boxes out of each image (bilinear, zero padding).

  Args:
    image: ``[B, H, W, C]``.
    boxes: ``[B, N, 4]`` as ``(s_x, s_y, t_x, t_y)``.
    size: the crops' side.
  Returns:
    ``[B, N, size, size, C]`` (the image is not copied per box).
  """
  _, h, w, _ = image.shape
  g = base_coordinates(size, boxes.dtype)  # [size]
  u = boxes[..., 0, None] * g + boxes[..., 2, None]  # [B, N, size]
  v = boxes[..., 1, None] * g + boxes[..., 3, None]
  wx = interpolation_matrix(u, w)  # [B, N, size, W]
  wy = interpolation_matrix(v, h)  # [B, N, size, H]
  rows = jnp.einsum("bnyh,bhwc->bnywc", wy, image)
  return jnp.einsum("bnywc,bnxw->bnyxc", rows, wx)


def paste_boxes(glimpses: Array, boxes: Array, height: int,
                width: int) -> Array:
  """Writes each glimpse into its box of an empty image (the inverse STN of
  `crop_boxes`: zero outside the box).

  Args:
    glimpses: ``[B, N, G_h, G_w, C]``.
    boxes: ``[B, N, 4]`` as ``(s_x, s_y, t_x, t_y)``.
  Returns:
    ``[B, N, H, W, C]``.
  """
  gh, gw = glimpses.shape[2:4]
  xs = base_coordinates(width, boxes.dtype)
  ys = base_coordinates(height, boxes.dtype)
  u = (xs - boxes[..., 2, None]) / boxes[..., 0, None]  # [B, N, W]
  v = (ys - boxes[..., 3, None]) / boxes[..., 1, None]  # [B, N, H]
  wx = interpolation_matrix(u, gw)  # [B, N, W, G_w]
  wy = interpolation_matrix(v, gh)  # [B, N, H, G_h]
  rows = jnp.einsum("bnyg,bngjc->bnyjc", wy, glimpses)
  return jnp.einsum("bnyjc,bnxj->bnyxc", rows, wx)
