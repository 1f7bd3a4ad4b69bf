"""AE-NE background autoencoder and its robust loss (AST-Seg's phase 1).

AST-Seg (paper 003 Sec. 4.2) reconstructs the background with the
deterministic convolutional autoencoder of Sauvalle & de La Fortelle,
"Autoencoder-based background reconstruction and foreground segmentation
with background noise estimation" ([38]), pretrained alone with that paper's
robust loss (curriculum phase 1). As the official code builds it
(``background/models.py``, ``background/train.py``):

* Encoder: blocks of conv (no bias) -> GroupNorm(max(1, C/16)) -> CELU, each
  on its input concatenated with a 2-channel position map (row ``i/(h-1) -
  0.5``, column ``j/(w-1) - 0.5``; 1 where a side is 1 pixel), down to a 1x1
  map of ``nz = 16`` channels. Kernels/strides/paddings follow the size
  (`layout`): 5x5 stride 2 padding 2 while a side exceeds 5 (stride 3 for
  images of 200+ pixels), 4x4 stride 2 padding 1 above 3, then the whole
  remaining side.
* Generator: the mirror image with transposed convolutions (the position map
  of each block's input concatenated first), GroupNorm + CELU except after
  the last, ``sigmoid * 255``: 3 background channels and a 4th that predicts
  the background reconstruction error (all in 0..255).
* Loss (`robust_loss`, inputs in 0..255): per-pixel smooth-L1 errors
  (beta 3) summed over channels / 255, plus the error-prediction channel's
  smooth-L1 error (beta 3/255) against a third of the (stopped) pixel error,
  weighted by ``exp(-beta avgpool(tanh(err / tau_1)))`` (no gradient through
  the weights) and averaged over pixels.

Channel schedules (`channels`) depend on the number of blocks and on the
"complex background" flag (True for CLEVRTEX, ShapeStacks, ObjectsRoom;
False for CLEVR).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import ast_unet
from ocjax.nn import conv
from ocjax.nn import conv_transpose as conv_transpose_lib
from ocjax.nn import init

Array = jax.Array

LATENT_DIM = 16
TORCH_NORM_EPS = 1e-5

# The loss's hyperparameters (background/config.py: AE-NE's standard values).
BETA = 6.0
R = 75
TAU_1 = 0.25


def _axis_layout(current: int, small: bool, other: int | None = None):
  """(kernel, stride, padding) of one axis; ``other`` replaces ``current``
  in the 4x4 test (the official generator tests the height for the width)."""
  test = current if other is None else other
  if current > 5:
    return (5, 2, 2) if small else (5, 3, 2)
  if test > 3 and small:
    return (4, 2, 1)
  return (current, 1, 0)


def layout(height: int, width: int, *, generator: bool = False):
  """Per block: input shape, kernel, stride, padding, output padding."""
  small = max(height, width) < 200
  h, w = height, width
  blocks = []
  while h > 1 or w > 1:
    kh, sh, ph = _axis_layout(h, small)
    kw, sw, pw = _axis_layout(w, small, h if generator else None)
    nh = 1 + (h + 2 * ph - kh) // sh
    nw = 1 + (w + 2 * pw - kw) // sw
    op = ((h + 2 * ph - kh) % sh, (w + 2 * pw - kw) % sw)
    blocks.append(dict(shape=(h, w), out_shape=(nh, nw), kernel=(kh, kw),
                       stride=(sh, sw), padding=(ph, pw), output_padding=op))
    h, w = nh, nw
  return blocks


_ENCODER = {
    (5, False): (3, 64, 160, 160, 32, LATENT_DIM),
    (5, True): (3, 64, 160, 160, 16, LATENT_DIM),
    (6, False): (3, 64, 160, 320, 160, 32, LATENT_DIM),
    (6, True): (3, 64, 160, 320, 160, 16, LATENT_DIM),
    (7, False): (3, 64, 160, 320, 160, 160, 32, LATENT_DIM),
    (7, True): (3, 64, 320, 640, 640, 320, 16, LATENT_DIM),
}
_GENERATOR = {
    (5, False): (4, 144, 256, 256, 32, 16),
    (5, True): (4, 144, 640, 640, 16, 16),
    (6, False): (4, 144, 256, 512, 256, 32, 16),
    (6, True): (4, 144, 640, 1280, 640, 16, 16),
    (7, False): (4, 144, 256, 512, 256, 256, 32, 16),
    (7, True): (4, 144, 640, 1280, 640, 320, 16, 16),
}


def channels(num_blocks: int, complexity: bool, *, generator: bool):
  table = _GENERATOR if generator else _ENCODER
  key = (num_blocks, bool(complexity))
  if key not in table:
    raise ValueError(
        f"The background autoencoder is defined for 5 to 7 blocks (images of "
        f"about 32 to 128 pixels, or 200+ pixels); this image size needs "
        f"{num_blocks}.")
  return table[key]


def position_map(height: int, width: int) -> np.ndarray:
  """``get_positional_encoding``: ``[h, w, 2]`` (row, column) in float32."""
  rows = (np.arange(height) / (height - 1) - 0.5 if height > 1
          else np.ones(1))
  cols = (np.arange(width) / (width - 1) - 0.5 if width > 1
          else np.ones(1))
  r, c = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([r, c], axis=-1).astype(np.float32)


def _with_positions(x: Array) -> Array:
  b, h, w, _ = x.shape
  pos = jnp.asarray(position_map(h, w), x.dtype)
  return jnp.concatenate([x, jnp.broadcast_to(pos, (b, h, w, 2))], axis=-1)


def _groups(c: int) -> int:
  return max(1, c // 16)


def conv_transpose(x: Array, kernel: Array, stride, padding,
                   output_padding, *, subpixel: bool = True) -> Array:
  """``ConvTranspose2d`` (kernel ``[kh, kw, C_in, C_out]``, scatter layout).

  Stride-2 layers that double the size run without the zero-dilated input
  (`ocjax.nn.conv_transpose`): on CPU as one matmul and a col2im (its
  layers have many channels on small maps, or few output channels: with
  phase convolutions AST-Seg's training step in the curriculum's phase 2
  took 1.29x as long, `benchmarks/transposed_convs.py --step`, README),
  elsewhere as sub-pixel convolutions. The others (and ``subpixel=False``)
  run as a convolution over the zero-dilated input.
  """
  kh, kw = kernel.shape[:2]
  if (subpixel and tuple(stride) == (2, 2) and kh == kw
      and padding[0] == padding[1] and output_padding[0] == output_padding[1]
      and kh - 2 * padding[0] + output_padding[0] == 2):
    if jax.default_backend() == "cpu":
      return conv_transpose_lib.conv_transpose_col2im(
          x, kernel, padding[0], output_padding[0])
    return conv_transpose_lib.conv_transpose_subpixel(
        x, kernel, padding[0], output_padding[0])
  pads = tuple((k - 1 - p, k - 1 - p + op)
               for k, p, op in zip((kh, kw), padding, output_padding))
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=tuple(stride),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _init(loader, name: str, default):
  """``loader(name)`` (weights from a file, see `ocjax.models.ast_seg`) or
  the default initializer."""
  return default if loader is None else loader(name)


class BackgroundEncoder(nn.Module):
  """``Background_Encoder``: ``[B, H, W, 3]`` (0..255) -> ``[B, 16]``.

  ``loader``: optional ``name -> initializer`` (names ``conv_i``,
  ``norm_i/scale``, ``norm_i/bias``) that replaces the random
  initialisation, e.g. with pretrained weights.
  """
  complexity: bool = True
  dtype: Any = jnp.float32
  loader: Any = None

  @nn.compact
  def __call__(self, images: Array) -> Array:
    b, h, w, _ = images.shape
    blocks = layout(h, w)
    nchs = channels(len(blocks), self.complexity, generator=False)
    x = images.astype(self.dtype)
    for i, blk in enumerate(blocks):
      x = _with_positions(x)
      kh, kw = blk["kernel"]
      kernel = self.param(f"conv_{i}", _init(
          self.loader, f"conv_{i}",
          init.torch_default(x.shape[-1] * kh * kw)),
                          (kh, kw, x.shape[-1], nchs[i + 1]))
      ph, pw = blk["padding"]
      x = conv.conv2d(x, kernel.astype(self.dtype), ((ph, ph), (pw, pw)),
                      tuple(blk["stride"]))
      x = nn.GroupNorm(
          num_groups=_groups(nchs[i + 1]), epsilon=TORCH_NORM_EPS,
          use_fast_variance=False, dtype=self.dtype,
          scale_init=_init(self.loader, f"norm_{i}/scale",
                           nn.initializers.ones),
          bias_init=_init(self.loader, f"norm_{i}/bias",
                          nn.initializers.zeros), name=f"norm_{i}")(x)
      x = ast_unet.celu(x)
    return x.reshape(b, LATENT_DIM)


class BackgroundGenerator(nn.Module):
  """``Background_Generator``: ``[B, 16] -> [B, H, W, 4]`` in 0..255."""
  height: int
  width: int
  complexity: bool = True
  dtype: Any = jnp.float32
  loader: Any = None  # as BackgroundEncoder's (``deconv_j``, ``norm_j/..``)

  @nn.compact
  def __call__(self, latents: Array) -> Array:
    blocks = layout(self.height, self.width, generator=True)
    n = len(blocks)
    nchs = channels(n, self.complexity, generator=True)
    x = latents.astype(self.dtype).reshape(latents.shape[0], 1, 1, LATENT_DIM)
    # Official module index j runs over blocks i = n-1 .. 0.
    for j, i in enumerate(reversed(range(n))):
      blk = blocks[i]
      x = _with_positions(x)
      kh, kw = blk["kernel"]
      c_out = nchs[i]
      kernel = self.param(
          f"deconv_{j}", _init(self.loader, f"deconv_{j}",
                               init.torch_default(c_out * kh * kw)),
          (kh, kw, x.shape[-1], c_out))
      x = conv_transpose(x, kernel.astype(self.dtype), blk["stride"],
                         blk["padding"], blk["output_padding"])
      if i != 0:
        x = nn.GroupNorm(
            num_groups=_groups(c_out), epsilon=TORCH_NORM_EPS,
            use_fast_variance=False, dtype=self.dtype,
            scale_init=_init(self.loader, f"norm_{j}/scale",
                             nn.initializers.ones),
            bias_init=_init(self.loader, f"norm_{j}/bias",
                            nn.initializers.zeros), name=f"norm_{j}")(x)
        x = ast_unet.celu(x)
    return jax.nn.sigmoid(x) * 255


def smooth_l1(x: Array, y: Array, beta: float) -> Array:
  """``torch.nn.functional.smooth_l1_loss(reduction='none', beta)``."""
  d = jnp.abs(x - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _avg_pool_valid(x: Array, size: int, padding: int) -> Array:
  """``avg_pool2d(stride=1, count_include_pad=False)`` of ``[B, H, W]``."""
  if size == 1:
    return x
  pads = ((0, 0), (padding, padding), (padding, padding))
  window = (1, size, size)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1), pads)
  count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, window,
                                (1, 1, 1), pads)
  return total / count


def robust_loss(images: Array, backgrounds: Array, *, beta: float = BETA,
                r: int = R, tau_1: float = TAU_1) -> tuple[Array, Array]:
  """AE-NE's background loss per example (``background_loss``).

  Args:
    images: ``[B, H, W, 3]`` in 0..255.
    backgrounds: the generator's output ``[B, H, W, 4]`` in 0..255.
  Returns:
    ``(loss [B], soft foreground masks [B, H, W])``; the batch mean of the
    loss is the official (batch-normalised) sum.
  """
  _, _, w, _ = images.shape
  pixel_errors = jnp.sum(smooth_l1(images, backgrounds[..., :3], 3.0),
                         axis=-1) * (1 / 255.0)  # [B, H, W], 0..3
  error_prediction = backgrounds[..., 3] * (1 / 255)
  error_prediction_error = smooth_l1(
      error_prediction, jax.lax.stop_gradient(pixel_errors) * (1 / 3),
      3.0 / 255)
  soft_masks = jax.lax.stop_gradient(jnp.tanh(pixel_errors * (1 / tau_1)))
  pad = w // r
  weight_logit = -beta * _avg_pool_valid(soft_masks, 2 * pad + 1, pad)
  weights = jnp.exp(weight_logit)
  loss = jnp.mean((pixel_errors + error_prediction_error) * weights,
                  axis=(1, 2))
  return loss, soft_masks
