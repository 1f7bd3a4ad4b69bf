"""A video model fits the protocol: trainer, figures (strip + GIF), runner.

The video models (APEX, the spatio-temporal model) land later; this toy model
(a per-frame convolutional mixture, slots shared over time) checks now that
the generic code carries ``video [B, T, H, W, 3]`` inputs and
``[B, T, K, H, W, 1]`` masks without knowing any model.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import bouncing_balls
from experiments import common
from ocjax.eval import runner
from ocjax.models import base
from ocjax.train import loop
from ocjax.viz import video as video_viz


class ToyVideo(base.ObjectCentricModel):
  """Per-pixel mixture of K flat colours; the mask logits come from a conv."""
  num_slots: int = 3
  image_size: int = 16
  num_frames: int = 4

  segmentation_names = ("masks",)
  reported_segmentation = "masks"
  input_key = "video"

  def dummy_batch(self, batch_size=1):
    s, t = self.image_size, self.num_frames
    return {"video": np.zeros((batch_size, t, s, s, 3), np.float32)}

  @nn.compact
  def __call__(self, batch, *, train=True):
    x = batch["video"]  # [B, T, H, W, 3]
    b, t, h, w, _ = x.shape
    k = self.num_slots
    logits = nn.Conv(k, (3, 3))(x.reshape(b * t, h, w, 3))
    logits = jnp.moveaxis(logits.reshape(b, t, h, w, k), -1, 2)[..., None]
    masks = jax.nn.softmax(logits, axis=2)  # [B, T, K, H, W, 1]
    colours = jax.nn.sigmoid(self.param(
        "colours", nn.initializers.normal(1.0), (k, 3)))
    components = jnp.broadcast_to(colours[None, None, :, None, None],
                                  (b, t, k, h, w, 3))
    recon = jnp.sum(masks * components, axis=2)
    mse = jnp.mean((recon - x) ** 2, axis=(1, 2, 3, 4))
    return base.ModelOutput(
        recon=recon, masks=masks, components=components,
        losses={"mse": mse},
        latents=jnp.broadcast_to(colours[None, None], (b, t, k, 3)),
        segmentations={"masks": masks})


def _config():
  data = bouncing_balls.default_config()
  data.image_size = 16
  data.num_frames = 4
  data.episode_length = 6
  data.num_train, data.num_validation, data.num_test = 16, 4, 4
  model = ml_collections.ConfigDict({"name": "toy_video"})
  objective = ml_collections.ConfigDict({"name": "weighted_sum"})
  c = common.base_config(model=model, data=data, objective=objective)
  common.apply_shared_option(c, "smoke")
  c.eval.num_examples = 4
  return c


def test_a_video_model_through_the_trainer_figures_and_runner(
    tmp_path, monkeypatch):
  from ocjax import models  # pylint: disable=g-import-not-at-top
  real = models.model_class
  monkeypatch.setattr(models, "model_class", lambda name: (
      ToyVideo if name == "toy_video" else real(name)))
  config = _config()
  workdir = str(tmp_path)
  metrics = loop.train(config, workdir)
  assert np.isfinite(metrics["loss"])
  strip_png = os.path.join(workdir, "images", "video_latest.png")
  gif = os.path.join(workdir, "images", "video_latest.gif")
  assert os.path.exists(strip_png) and os.path.exists(gif)
  with Image.open(gif) as g:
    assert g.n_frames == config.data.num_frames
  results = runner.evaluate(workdir)
  assert results["num_images"] == 4
  assert np.isfinite(results["fixed/masks/ari"])
  assert -1.0 <= results["fixed/masks/ari_fg"] <= 1.0


def test_video_scores_follow_tracks_over_time():
  """Per clip: a slot that swaps objects between frames is penalised."""
  from ocjax.metrics import segmentation as seg  # pylint: disable=g-import-not-at-top
  t, h, w = 4, 6, 6
  truth = np.zeros((1, t, h, w), np.int32)
  truth[:, :, :3, :3] = 1
  truth[:, :, 3:, 3:] = 2
  def masks_of(labels):  # [T, H, W] slot ids -> [1, T, K, H, W, 1]
    return np.moveaxis(np.eye(3)[labels], -1, 1)[None, ..., None]
  consistent = masks_of(truth[0])
  swapped_labels = truth[0].copy()
  swapped_labels[2:][truth[0, 2:] == 1] = 2
  swapped_labels[2:][truth[0, 2:] == 2] = 1
  swapped = masks_of(swapped_labels)
  def clip_ari(m):
    b, tt, k, hh, ww, _ = m.shape
    flat = np.moveaxis(m, 2, 1).reshape(b, k, tt * hh, ww, 1)
    return float(seg.segmentation_metrics(
        flat, truth.reshape(b, tt * hh, ww))["ari_fg"][0])
  assert clip_ari(consistent) == 1.0
  assert clip_ari(swapped) < 0.5


def test_strip_and_animation_shapes():
  b, t, k, s = 2, 3, 2, 8
  rng = np.random.default_rng(0)
  video = rng.random((b, t, s, s, 3))
  masks = np.moveaxis(np.eye(k)[rng.integers(0, k, (b, t, s, s))], -1,
                      2)[..., None]
  comps = rng.random((b, t, k, s, s, 3))
  img = video_viz.strip(video, video, {"masks": masks}, masks, comps,
                        rng.integers(0, 3, (b, t, s, s)))
  # Per clip: input, truth, recon, one segmentation, K components.
  rows = b * (4 + k)
  assert img.shape == (rows * (s + 2) + 2, t * (s + 2) + 2, 3)
  frames = video_viz.animation_frames(video[0], video[0], {"masks": masks[0]},
                                      masks[0], comps[0])
  assert len(frames) == t and frames[0].shape == (s + 4, (3 + k) * (s + 2)
                                                  + 2, 3)
