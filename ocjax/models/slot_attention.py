"""Slot Attention (Locatello et al., NeurIPS 2020): the object-discovery model.

As the official TensorFlow 2 code computes it (google-research
``slot_attention/model.py``, ``SlotAttentionAutoEncoder``; parity with it is
tested value by value in ``tests/test_slot_attention_parity.py``):

* Encoder: 5x5 'SAME' convolutions with ReLU, a soft position embedding
  (``x + Dense(grid)``, grid ``[row, col, 1-row, 1-col]``), the feature map
  flattened into a set of N inputs, LayerNorm and a feed-forward MLP.
* Slot Attention (paper Alg. 1): ``slots = mu + exp(log_sigma) * noise``;
  T rounds of: LayerNorm inputs / slots, ``q, k, v`` without bias,
  ``q * D^-1/2``, softmax over *slots*, ``+ eps`` then renormalised over
  *inputs* (a weighted mean), GRU update, residual MLP with LayerNorm. The
  rounds are one `nn.scan` (`ocjax.nn.slot_attention.SlotAttention`).
* Spatial broadcast decoder: every slot tiled on an initial grid plus a
  position embedding, (transposed) convolutions down to 4 channels: RGB and
  a mask logit; masks are a softmax over slots and the image is
  ``sum_k mask_k * rgb_k``.
* Loss: the mean squared error (the official ``l2_loss``).

Data range: ocjax images are in [0, 1]; the official model sees [-1, 1]. The
model maps its input (``2 x - 1``), computes the loss in that space (the
term ``l2`` ``[B]``, the per-image mean over pixels and channels, whose batch
mean is the official loss; 4x the evaluation's ``mse``) and returns ``recon`` and ``components`` mapped back to
[0, 1] (``(y + 1) / 2``; the RGB outputs have no squashing, so they may leave
that range slightly).

Architectures (decoder configurable): the official CLEVR decoder broadcasts
to 8x8 and upsamples with four stride-2 5x5 transposed convolutions, then a
stride-1 5x5 and a 3x3 to 4 channels (128x128 output); the paper's
Multi-dSprites / Tetrominoes decoder broadcasts to the full resolution and
uses stride-1 layers only (``experiments/slot_attention.py``).

Axis legend: B batch, K slots, N inputs (h w), H height, W width,
C channels, D slot size, F features.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.models import base
from ocjax.nn import slot_attention as sa

Array = jax.Array


def _pair(value) -> tuple[int, int]:
  if isinstance(value, (tuple, list)):
    if len(value) != 2:
      raise ValueError(f"Expected an int or a pair, got {value!r}.")
    return int(value[0]), int(value[1])
  return int(value), int(value)


class SlotAttention(base.ObjectCentricModel):
  """Slot Attention autoencoder; ``__call__(batch) -> ModelOutput``.

  Segmentations: ``attention`` (the last round's attention, softmax over
  slots, on the encoder's feature map; resized to the image if the encoder
  strides) and ``decoder`` (the decoded mask softmax, the reported one).

  Attributes:
    num_slots: K.
    image_size: H = W of the inputs.
    num_iterations: T, rounds of attention (3).
    slot_size: D (64).
    mlp_hidden_size: hidden units of the slot-update MLP (128).
    epsilon: offset added to the attention before the weighted mean (1e-8).
    layernorm_epsilon: every LayerNorm's epsilon (Keras's 1e-3).
    encoder_channels, encoder_kernel_sizes, encoder_strides: the encoder's
      'SAME' convolutions (ReLU after each); the position embedding has
      ``encoder_channels[-1]`` features.
    feedforward_sizes: the MLP after the encoder's LayerNorm (ReLU between
      layers); its last size is the width of Slot Attention's inputs.
    decoder_initial_size: the broadcast grid (an int or (h, w)).
    decoder_channels, decoder_kernel_sizes, decoder_strides: the decoder's
      layers; stride 2 = a 'SAME' transposed convolution (upsampling by 2),
      stride 1 = a 'SAME' convolution; the last has 4 channels (RGB + mask
      logit) and no activation.
    subpixel_deconv: compute stride-2 layers as sub-pixel convolutions (the
      same numbers; faster on CPU).
    dtype: compute dtype ("float32"; "float64" for the parity tests).
  """
  num_slots: int = 7
  image_size: int = 128
  num_iterations: int = 3
  slot_size: int = 64
  mlp_hidden_size: int = 128
  epsilon: float = 1e-8
  layernorm_epsilon: float = sa.KERAS_LAYERNORM_EPS
  encoder_channels: Sequence[int] = (64, 64, 64, 64)
  encoder_kernel_sizes: Sequence[int] = (5, 5, 5, 5)
  encoder_strides: Sequence[int] = (1, 1, 1, 1)
  feedforward_sizes: Sequence[int] = (64, 64)
  decoder_initial_size: Any = 8
  decoder_channels: Sequence[int] = (64, 64, 64, 64, 64, 4)
  decoder_kernel_sizes: Sequence[int] = (5, 5, 5, 5, 5, 3)
  decoder_strides: Sequence[int] = (2, 2, 2, 2, 1, 1)
  subpixel_deconv: bool = True
  dtype: Any = jnp.float32

  rng_streams = ("sample",)  # the slot initialisation noise
  eval_modes = {"fixed": {}}
  segmentation_names = ("attention", "decoder")
  reported_segmentation = "decoder"
  input_key = "image"

  # ------------------------------------------------------------- checks
  def _check_config(self) -> None:
    def lengths(prefix, *names):
      values = [tuple(getattr(self, f"{prefix}_{n}")) for n in names]
      if len({len(v) for v in values}) != 1 or not values[0]:
        raise ValueError(
            f"model.{prefix}_{names[0]}, " + ", ".join(
                f"model.{prefix}_{n}" for n in names[1:])
            + f" must be non-empty and of equal length; got {values}.")
    lengths("encoder", "channels", "kernel_sizes", "strides")
    lengths("decoder", "channels", "kernel_sizes", "strides")
    if self.num_slots < 1 or self.num_iterations < 1:
      raise ValueError("model.num_slots and model.num_iterations must be "
                       f">= 1; got {self.num_slots}, {self.num_iterations}.")
    if not self.feedforward_sizes:
      raise ValueError("model.feedforward_sizes must not be empty.")
    if self.decoder_channels[-1] != 4:
      raise ValueError("The decoder's last layer gives RGB and a mask logit: "
                       f"model.decoder_channels[-1] must be 4, got "
                       f"{self.decoder_channels[-1]}.")
    for s, k in zip(self.decoder_strides, self.decoder_kernel_sizes):
      if s not in (1, 2) or (s == 1 and k % 2 == 0):
        raise ValueError(
            "model.decoder_strides must be 1 or 2, stride-1 layers with odd "
            f"kernels; got strides {tuple(self.decoder_strides)}, kernels "
            f"{tuple(self.decoder_kernel_sizes)}.")
    h, w = self.feature_size
    if h * self.total_encoder_stride != self.image_size:
      raise ValueError(
          f"model.encoder_strides {tuple(self.encoder_strides)} do not divide "
          f"model.image_size={self.image_size}.")
    up = 2 ** sum(1 for s in self.decoder_strides if s == 2)
    h0, w0 = _pair(self.decoder_initial_size)
    if (h0 * up, w0 * up) != (self.image_size, self.image_size):
      raise ValueError(
          f"The decoder outputs {h0 * up}x{w0 * up} images "
          f"(model.decoder_initial_size={self.decoder_initial_size} times 2 "
          f"per stride-2 layer of model.decoder_strides="
          f"{tuple(self.decoder_strides)}) but model.image_size is "
          f"{self.image_size}.")

  @property
  def total_encoder_stride(self) -> int:
    total = 1
    for s in self.encoder_strides:
      total *= int(s)
    return total

  @property
  def feature_size(self) -> tuple[int, int]:
    """(h, w) of the encoder's feature map ('SAME' convs: ceil(H / s))."""
    size = self.image_size
    for s in self.encoder_strides:
      size = -(-size // int(s))
    return size, size

  def setup(self):
    self._check_config()
    dt = self.dtype
    self.encoder_convs = [
        nn.Conv(c, (k, k), strides=(s, s), padding="SAME", dtype=dt,
                kernel_init=sa.glorot_uniform, bias_init=sa.zeros,
                name=f"encoder_conv_{i}")
        for i, (c, k, s) in enumerate(zip(self.encoder_channels,
                                          self.encoder_kernel_sizes,
                                          self.encoder_strides))]
    self.encoder_pos_embed = sa.SoftPositionEmbed(
        self.encoder_channels[-1], self.feature_size, dtype=dt)
    self.encoder_norm = sa.layer_norm(self.layernorm_epsilon, dt,
                                      "encoder_norm")
    self.feedforward = [sa.dense(f, dt, f"feedforward_{i}")
                        for i, f in enumerate(self.feedforward_sizes)]
    self.slot_attention = sa.SlotAttention(
        num_iterations=self.num_iterations, slot_size=self.slot_size,
        mlp_hidden_size=self.mlp_hidden_size, epsilon=self.epsilon,
        layernorm_epsilon=self.layernorm_epsilon, dtype=dt)
    self.decoder = sa.SpatialBroadcastDecoder(
        initial_size=_pair(self.decoder_initial_size),
        channels=tuple(self.decoder_channels),
        kernel_sizes=tuple(self.decoder_kernel_sizes),
        strides=tuple(self.decoder_strides), subpixel=self.subpixel_deconv,
        dtype=dt)

  # ------------------------------------------------------------- stages
  def encode(self, x: Array) -> Array:
    """``x [B, H, W, 3]`` in [-1, 1] -> the set of inputs ``[B, N, F]``."""
    for conv in self.encoder_convs:
      x = nn.relu(conv(x))
    self.sow("intermediates", "encoder_cnn", x)
    x = self.encoder_pos_embed(x)
    self.sow("intermediates", "encoder_pos", x)
    b, h, w, c = x.shape
    x = self.encoder_norm(x.reshape(b, h * w, c))  # row-major: h W + w
    self.sow("intermediates", "encoder_layernorm", x)
    last = len(self.feedforward) - 1
    for i, layer in enumerate(self.feedforward):
      x = layer(x)
      if i < last:
        x = nn.relu(x)
    self.sow("intermediates", "encoder_mlp", x)
    return x

  def decode(self, slots: Array):
    """``slots [B, K, D]`` -> ``(rgb [B, K, H, W, 3], mask_logits
    [B, K, H, W, 1], masks, recon [B, H, W, 3])``, all in [-1, 1] space."""
    b, k, d = slots.shape
    out = self.decoder(slots.reshape(b * k, d))  # [B K, H, W, 4], b K + k
    out = out.reshape((b, k) + out.shape[1:])
    rgb, mask_logits = out[..., :3], out[..., 3:]
    masks = jax.nn.softmax(mask_logits, axis=1)  # over slots
    recon = jnp.sum(rgb * masks, axis=1)
    return rgb, mask_logits, masks, recon

  # ------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               noise: Array | dict[str, Array] | None = None
               ) -> base.ModelOutput:
    """Encodes, decodes and scores a batch.

    Args:
      batch: dict with ``image`` ``[B, H, W, 3]`` in [0, 1].
      train: unused (no dropout or batch statistics); part of the protocol.
      noise: the standard-normal slot-initialisation draw ``[B, K, D]`` (or
        ``{"slot_init_noise": ...}``), for tests and parity checks;
        otherwise drawn from the ``sample`` rng stream.
    """
    del train
    image = batch[self.input_key]
    b, h, w, _ = image.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"Slot Attention was built for {self.image_size}x{self.image_size} "
          f"images (config model.image_size) but got {h}x{w}.")
    k, d = self.num_slots, self.slot_size
    if isinstance(noise, dict):
      noise = noise.get("slot_init_noise")
    if noise is None:
      noise = jax.random.normal(self.make_rng("sample"), (b, k, d), self.dtype)
    if noise.shape != (b, k, d):
      raise ValueError(f"noise must be [B, K, D] = {(b, k, d)}, got "
                       f"{noise.shape}.")

    x = image.astype(self.dtype) * 2.0 - 1.0  # the official [-1, 1] range
    inputs = self.encode(x)  # [B, N, F]
    slots, attn, slots_init = self.slot_attention(inputs, noise)
    self.sow("intermediates", "slots", slots)
    rgb, mask_logits, masks, recon = self.decode(slots)
    self.sow("intermediates", "mask_logits", mask_logits)
    self.sow("intermediates", "recon_combined", recon)

    # Loss: mean squared error per image, in the official [-1, 1] space.
    l2 = jnp.mean((recon - x) ** 2, axis=(1, 2, 3))  # [B]

    # Attention segmentation: [B, N, K] -> [B, K, h, w, 1] (sums to 1 over K).
    fh, fw = self.feature_size
    attention = jnp.moveaxis(attn.reshape(b, fh, fw, k), -1, 1)[..., None]
    if (fh, fw) != (h, w):
      attention = jax.image.resize(attention, (b, k, h, w, 1), "bilinear")
    return base.ModelOutput(
        recon=(recon + 1.0) / 2.0, masks=masks, components=(rgb + 1.0) / 2.0,
        losses={"l2": l2}, latents=slots,
        segmentations={"attention": attention, "decoder": masks},
        aux={"slots_init": slots_init})


MODEL = SlotAttention
