"""AST-Seg's own tests: shapes, the equations' properties, the STN, the
curriculum and the step schedule (parity: tests/test_ast_seg_parity.py)."""

from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from experiments import ast_seg as experiment
from ocjax import run as run_lib
from ocjax.train import optimizer as optimizer_lib
from ocjax.convert import ast_seg as convert
from ocjax.models import ast_seg
from ocjax.nn import ast_unet
from ocjax.nn import background_ae
from ocjax.nn import glimpse as glimpse_lib
from ocjax.nn import stn
from ocjax.nn import transformer as transformer_lib
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.viz import grids

# A minute model (the experiment's tiny option) on 32x32 images.
TINY = dict(num_slots=3, image_size=32, z_what_dim=8, unet_widths=(8, 8, 8),
            transformer_dim=16, transformer_heads=2, transformer_feedforward=32,
            transformer_layers=1, glimpse_size=8, background_complexity=False,
            transformer_dropout=0.0)


def _model(**changes):
  return ast_seg.AstSeg(**{**TINY, **changes})


def _batch(b=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.random((b, size, size, 3)).astype(np.float32)}


def _init(model, batch):
  """``model.init``, jitted: one XLA program, not the eager op-by-op run."""
  return jitted(model.init, train=False)(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)


@functools.lru_cache(maxsize=1)
def _tiny_variables():
  """The tiny model's variables, initialised once (XLA compiles a random
  draw per parameter shape: initialisation is the slow part here)."""
  return _init(_model(), _batch())


def _without(variables, *names):
  """``variables`` without the parameter subtrees ``names``."""
  params = {k: v for k, v in variables["params"].items() if k not in names}
  return dict(variables, params=params)


@pytest.fixture(scope="module")
def tiny():
  return _model(), _tiny_variables(), _batch()


# ------------------------------------------------------------------ outputs
def test_output_shapes_and_masks(tiny):
  model, variables, batch = tiny
  out = jitted(model.apply, train=False)(variables, batch)
  b, k = 2, model.num_slots
  assert out.recon.shape == (b, 32, 32, 3)
  assert out.masks.shape == (b, k + 1, 32, 32, 1)
  assert out.components.shape == (b, k + 1, 32, 32, 3)
  assert out.latents.shape == (b, k + 1, model.latent_dim)
  np.testing.assert_array_equal(out.latents[:, 0], 0)  # the background row
  np.testing.assert_allclose(out.masks.sum(1), 1.0, atol=1e-5)
  att = out.segmentations["attention"]
  assert att.shape == (b, k, 32, 32, 1)
  np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)
  assert set(out.losses) == {"reconstruction", "entropy"}
  for v in out.losses.values():
    assert v.shape == (b,) and np.all(np.isfinite(v))
  # Eq. 18: the image is the mask-weighted sum of the layers.
  np.testing.assert_allclose(out.recon, (out.masks * out.components).sum(1),
                             atol=1e-6)
  # Eq. 17 at initialisation: alpha_0 = e^11 wins every pixel.
  assert np.all(np.asarray(out.aux["segmentation"]) == 0)
  assert out.aux["positions"].shape == (b, k, 2)
  assert np.all(np.abs(out.aux["positions"]) <= 1)
  s = np.asarray(out.aux["inverse_scale"])
  assert s.shape == (b, k, 1) and np.all((s >= 1.3) & (s <= 24))


def test_anisotropic_latent_layout():
  model = _model(isotropic_scaling=False)
  assert model.latent_dim == 8 + 5 and model.feature_map_channels == 3 + 11
  lat = jnp.arange(13.0)[None, None]
  parts = model.split_latents(lat)
  assert parts["inverse_scale"].shape == (1, 1, 2)
  np.testing.assert_array_equal(parts["activation_logit"], [[4.0]])
  np.testing.assert_array_equal(parts["z_what"][0, 0], np.arange(5.0, 13))
  theta = model.theta(jnp.array([[0.5, -0.25]]), jnp.array([[2.0, 4.0]]))
  np.testing.assert_allclose(theta, [[[2, 0, -1], [0, 4, 1]]])


def test_isotropic_latent_layout_is_the_official_one():
  """README trap 1: index 3 unused, index 4 = activation logit = z[0]."""
  model = _model()
  parts = model.split_latents(jnp.arange(12.0)[None, None])
  np.testing.assert_array_equal(parts["activation_logit"], [[4.0]])
  np.testing.assert_array_equal(parts["z_what"][0, 0], np.arange(4.0, 12))


class JitTest(chex.TestCase):
  """jitted against un-jitted (`chex.variants`)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_train_call(self):
    model = _model()
    batch = _batch()
    variables = _tiny_variables()

    def apply(variables, batch):
      out, state = model.apply(variables, batch, train=True, step=3,
                               mutable=["batch_stats"])
      return out.recon, out.losses, out.masks, state["batch_stats"]

    got = self.variant(apply)(variables, batch)
    want = apply(variables, batch)
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    # Batch statistics moved.
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: not np.array_equal(a, b), variables["batch_stats"],
        got[3]))
    assert any(moved)


# ------------------------------------------------------------- soft-argmax
def test_position_map_is_eqs_12_13():
  pos = np.asarray(ast_seg.position_map(4, 5))
  np.testing.assert_allclose(pos[0, :, 0], [-1, -0.5, 0, 0.5, 1], atol=1e-7)
  np.testing.assert_allclose(pos[:, 0, 1], [-1, -1 / 3, 1 / 3, 1], atol=1e-7)


def _softargmax(logits):
  """The model's pooling for a [B, K, h, w] logit map (eqs. 11, 14-15)."""
  b, k, h, w = logits.shape
  a = jax.nn.softmax(logits.reshape(b, k, h * w), -1)
  pos = ast_seg.position_map(h, w).reshape(h * w, 2)
  return jnp.einsum("bkp,pd->bkd", a, pos)


def test_soft_argmax_properties():
  h = w = 9
  rng = np.random.default_rng(0)
  # A sharp peak: the soft-argmax is the peak's coordinates.
  logits = np.full((1, 1, h, w), -50.0, np.float32)
  logits[0, 0, 2, 6] = 50.0
  np.testing.assert_allclose(_softargmax(logits)[0, 0],
                             [2 * 6 / 8 - 1, 2 * 2 / 8 - 1], atol=1e-6)
  # Constant logits: the image centre.
  np.testing.assert_allclose(_softargmax(np.zeros((1, 1, h, w)))[0, 0],
                             [0, 0], atol=1e-6)
  # Translation equivariance (eq. 3): a blob moved by (u, v) pixels moves
  # the estimate by (2u / (w - 1), 2v / (h - 1)).
  yy, xx = np.mgrid[:h, :w]
  blob = lambda cy, cx: -((yy - cy) ** 2 + (xx - cx) ** 2) / 1.5
  p0 = _softargmax(blob(3, 3)[None, None])[0, 0]
  p1 = _softargmax(blob(5, 4)[None, None])[0, 0]
  np.testing.assert_allclose(p1 - p0, [2 * 1 / 8, 2 * 2 / 8], atol=1e-4)
  # Inside the convex hull of the pixel coordinates.
  p = _softargmax(rng.normal(size=(2, 3, h, w)) * 5)
  assert np.all(np.abs(p) <= 1)


def test_attention_maps_softmax_over_pixels(tiny):
  model, variables, batch = tiny
  out, state = model.apply(variables, batch, train=False,
                           mutable=["intermediates"])
  att = state["intermediates"]["attention_maps"][0]
  np.testing.assert_allclose(att.sum((2, 3)), 1.0, atol=1e-5)
  np.testing.assert_array_equal(out.aux["attention_maps"], att)
  pooled = state["intermediates"]["pooled_queries"][0]
  pos = ast_seg.position_map(32, 32)
  np.testing.assert_allclose(
      pooled[..., :2], jnp.einsum("bkhw,hwd->bkd", att, pos), atol=1e-6)
  # The figures' host soft-argmax is the model's (eqs. 14-15).
  np.testing.assert_allclose(ast_seg.soft_argmax(np.asarray(att)),
                             pooled[..., :2], atol=1e-6)


def test_clamp_passes_the_gradient_inclusively():
  g = jax.grad(lambda x: ast_seg.clamp(x, -1.0, 1.0).sum())(
      jnp.array([-2.0, -1.0, 0.3, 1.0, 1.5]))
  np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])


def test_entropy_warmup_ratio():
  r = ast_seg.entropy_warmup_ratio(jnp.array([0, 2500, 5000, 10000, 20000]),
                                   10_000)
  np.testing.assert_allclose(r, [0, 0.0625, 0.25, 1, 1])


# ---------------------------------------------------------------- the STN
def _grid_sample_reference(image, grid):
  """PyTorch's bilinear ``grid_sample`` (zeros, align_corners=False),
  written pixel by pixel in NumPy (float64)."""
  n, gh, gw, c = image.shape
  _, h, w, _ = grid.shape
  out = np.zeros((n, h, w, c))
  for b in range(n):
    for i in range(h):
      for j in range(w):
        x = ((grid[b, i, j, 0] + 1) * gw - 1) / 2
        y = ((grid[b, i, j, 1] + 1) * gh - 1) / 2
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
          for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
            if 0 <= yy < gh and 0 <= xx < gw:
              out[b, i, j] += wy * wx * image[b, yy, xx]
  return out


def _random_theta(n, rng, rotation=False):
  s = rng.uniform(1.3, 4.0, (n, 2))
  pos = rng.uniform(-1, 1, (n, 2))
  theta = np.zeros((n, 2, 3))
  theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
  theta[:, :, 2] = -pos * s
  if rotation:
    theta[:, 0, 1], theta[:, 1, 0] = rng.uniform(-0.5, 0.5, (2, n))
  return theta.astype(np.float32)


def test_affine_grid_is_torch():
  theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
  grid = np.asarray(stn.affine_grid(jnp.asarray(theta), 2, 4))
  np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75],
                             atol=1e-7)
  np.testing.assert_allclose(grid[0, :, 0, 1], [-0.5, 0.5], atol=1e-7)


def test_stn_sampling_equals_a_plain_reference():
  rng = np.random.default_rng(1)
  image = rng.random((3, 8, 8, 4)).astype(np.float32)
  theta = _random_theta(3, rng)
  want = _grid_sample_reference(image.astype(np.float64), np.asarray(
      stn.affine_grid(jnp.asarray(theta), 12, 10), np.float64))
  sep = stn.sample_axis_aligned(jnp.asarray(image), jnp.asarray(theta), 12,
                                10)
  gat = stn.grid_sample(jnp.asarray(image),
                        stn.affine_grid(jnp.asarray(theta), 12, 10))
  np.testing.assert_allclose(sep, want, atol=1e-5)
  np.testing.assert_allclose(gat, want, atol=1e-5)
  # The gather form also handles rotations.
  theta_r = _random_theta(3, rng, rotation=True)
  grid_r = stn.affine_grid(jnp.asarray(theta_r), 12, 10)
  np.testing.assert_allclose(
      stn.grid_sample(jnp.asarray(image), grid_r),
      _grid_sample_reference(image.astype(np.float64),
                             np.asarray(grid_r, np.float64)), atol=1e-5)


def test_stn_gradients_agree():
  rng = np.random.default_rng(2)
  image = jnp.asarray(rng.random((2, 8, 8, 4)), jnp.float32)
  theta = jnp.asarray(_random_theta(2, rng))
  weights = jnp.asarray(rng.normal(size=(2, 12, 12, 4)), jnp.float32)

  def loss(fn):
    return lambda im, th: jnp.sum(fn(im, th) * weights)

  sep = loss(lambda im, th: stn.sample_axis_aligned(im, th, 12, 12))
  gat = loss(lambda im, th: stn.grid_sample(im, stn.affine_grid(th, 12, 12)))
  g_sep = jax.grad(sep, argnums=(0, 1))(image, theta)
  g_gat = jax.grad(gat, argnums=(0, 1))(image, theta)
  np.testing.assert_allclose(g_sep[0], g_gat[0], atol=1e-4)
  # theta's off-diagonal terms: the separable form assumes they are 0.
  np.testing.assert_allclose(g_sep[1][:, 0, ::2], g_gat[1][:, 0, ::2],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_sep[1][:, 1, 1:], g_gat[1][:, 1, 1:],
                             rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- modules
def test_glimpse_generator_table_7():
  assert glimpse_lib.glimpse_channels(32) == (64, 32, 16, 8, 4)
  assert glimpse_lib.glimpse_channels(64) == (128, 64, 32, 16, 8, 4)
  assert [glimpse_lib.num_groups(c) for c in (64, 32, 16, 8)] == [4, 2, 1, 1]
  assert glimpse_lib.default_glimpse_size(64, 64) == 32
  assert glimpse_lib.default_glimpse_size(128, 128) == 64
  gen = glimpse_lib.GlimpseGenerator(16)
  z = jnp.ones((5, 6))
  v = gen.init(jax.random.key(0), z)
  out = gen.apply(v, z)
  assert out.shape == (5, 16, 16, 4)
  assert np.all((out > 0) & (out < 1))
  with pytest.raises(ValueError, match="power of two"):
    glimpse_lib.glimpse_channels(24)


def test_unet_odd_sizes_use_output_padding():
  """Intermediate sizes 48 -> 24 -> 12 -> 6 -> 3 -> 1: output paddings."""
  assert ast_unet.output_paddings(48, 48, 5)[-1] == (1, 1)
  net = ast_unet.Unet(5, (4, 4, 4, 4, 4, 4))
  x = jnp.ones((1, 48, 48, 3))
  out, _ = jax.eval_shape(lambda: net.init_with_output(
      jax.random.key(0), x, train=False))
  assert out.shape == (1, 48, 48, 5)


def test_transformer_is_permutation_equivariant():
  enc = transformer_lib.TransformerEncoder(num_layers=2, num_heads=2,
                                           dim_feedforward=8, dropout=0.1)
  x = jax.random.normal(jax.random.key(0), (2, 5, 6))
  v = enc.init(jax.random.key(1), x)
  perm = np.array([3, 0, 4, 1, 2])
  y = enc.apply(v, x)
  np.testing.assert_allclose(enc.apply(v, x[:, perm]), y[:, perm], atol=1e-5)
  # Dropout in training draws from the dropout stream.
  d1 = enc.apply(v, x, deterministic=False, rngs={"dropout":
                                                  jax.random.key(2)})
  d2 = enc.apply(v, x, deterministic=False, rngs={"dropout":
                                                  jax.random.key(3)})
  assert not np.allclose(d1, d2)


def test_background_autoencoder_layout():
  assert len(background_ae.layout(64, 64)) == 6
  assert len(background_ae.layout(128, 128)) == 7
  assert len(background_ae.layout(32, 32)) == 5
  blocks = background_ae.layout(64, 64, generator=True)
  assert blocks[0]["output_padding"] == (1, 1)  # 64 -> 32 with 5x5 s2 p2
  assert blocks[-1]["kernel"] == (2, 2)  # the last 2x2 -> 1x1
  enc = background_ae.BackgroundEncoder(complexity=False)
  gen = background_ae.BackgroundGenerator(32, 32, complexity=False)
  x = jnp.full((2, 32, 32, 3), 128.0)
  ve = enc.init(jax.random.key(0), x)
  z = enc.apply(ve, x)
  assert z.shape == (2, 16)
  vg = gen.init(jax.random.key(1), z)
  out = gen.apply(vg, z)
  assert out.shape == (2, 32, 32, 4)
  assert np.all((out >= 0) & (out <= 255))
  pm = background_ae.position_map(3, 1)
  np.testing.assert_array_equal(pm[..., 0, 0], [-0.5, 0, 0.5])
  np.testing.assert_array_equal(pm[..., 0, 1], [1, 1, 1])


@pytest.mark.parametrize("k, p, op", [(5, 2, 1), (4, 1, 0)])
def test_background_deconvolutions_subpixel_equal_dilated(k, p, op):
  """The fast form (col2im on CPU) against the zero-dilated convolution,
  values and both gradients."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  args = ((2, 2), (p, p), (op, op))
  np.testing.assert_allclose(
      background_ae.conv_transpose(x, kernel, *args),
      background_ae.conv_transpose(x, kernel, *args, subpixel=False),
      atol=1e-5)
  grads = lambda subpixel: jax.grad(lambda x, w: jnp.sum(jnp.sin(
      background_ae.conv_transpose(x, w, *args, subpixel=subpixel))),
                                    argnums=(0, 1))(x, kernel)
  for fast, plain in zip(grads(True), grads(False)):
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_robust_loss():
  rng = np.random.default_rng(0)
  images = rng.random((2, 16, 16, 3)) * 255
  exact = np.concatenate([images, np.zeros((2, 16, 16, 1))], -1)
  loss, soft = background_ae.robust_loss(jnp.asarray(images),
                                         jnp.asarray(exact))
  np.testing.assert_allclose(loss, 0, atol=1e-7)
  np.testing.assert_allclose(soft, 0, atol=1e-7)
  # Large errors (foreground) weigh less than small ones (background noise).
  bg = exact.copy()
  bg[0, :8, :, :3] += 100
  bg[0, 8:, :, :3] += 5
  loss, soft = background_ae.robust_loss(jnp.asarray(images), jnp.asarray(bg))
  per_pixel_err = np.array([300, 15]) / 255
  weights = np.exp(-6 * np.tanh(per_pixel_err / 0.25))
  assert weights[0] < 0.01 * weights[1]
  assert soft[0, 0, 0] > 0.99 and soft[0, 12, 0] < 0.3


# ------------------------------------------------------- step and curriculum
def test_step_sources(tiny):
  model, variables, batch = tiny
  assert model.uses_step  # the trainer passes the optimizer step

  def weight(step=None, entries=None, train=True):
    out, _ = model.apply(variables, {**batch, **(entries or {})},
                         train=train, step=step, mutable=["batch_stats"])
    return float(out.aux["entropy_weight"][0])

  # Eq. 22: min(1, step / 10k)^2 lambda.
  assert weight(step=0) == 0
  assert weight(step=5000) == pytest.approx(1e-2 * 0.25)
  # A batch entry when no argument is given; the argument wins.
  assert weight(entries={"step": np.full((2,), 5000, np.int32)}) == (
      pytest.approx(1e-2 * 0.25))
  assert weight(step=20_000, entries={
      "step": np.full((2,), 5000, np.int32)}) == pytest.approx(1e-2)
  # Without a step (evaluation): the schedules' end.
  assert weight(train=False) == pytest.approx(1e-2)


def _background_grad_norm(model, step):
  """|d sum(L_0) / d background autoencoder|^2 at ``step``."""
  batch = _batch()
  variables = _tiny_variables()  # the same parameters for every mode

  def loss(params, step):
    method = ast_seg.AstSeg._background  # pylint: disable=protected-access
    bg = model.apply(dict(variables, params=params), batch,
                     jnp.asarray(batch["image"]), step, method=method)
    return jnp.sum(bg)

  grads = jax.jit(jax.grad(loss))(variables["params"], jnp.int32(step))
  return float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(
      grads["background_ae"])))


def test_curriculum_freezes_the_background_then_trains_it():
  model = _model(background_training="curriculum", background_freeze_steps=10)
  assert _background_grad_norm(model, 9) == 0
  assert _background_grad_norm(model, 10) > 0
  assert _background_grad_norm(_model(background_training="frozen"),
                               10**6) == 0
  assert _background_grad_norm(_model(background_training="joint"), 0) > 0


def test_curriculum_through_the_loss():
  """The whole loss: no gradient into the background model in phase 2."""
  model = _model(background_training="curriculum", background_freeze_steps=10)
  batch = _batch()
  variables = _tiny_variables()
  # Objects must win some pixels: a low background logit.
  params = dict(variables["params"],
                background_activation_logit=jnp.full((1, 1), -2.0))

  @functools.partial(jax.jit, static_argnames="stage")
  def grads(step, stage=None):
    def loss(params):
      out, _ = model.apply(dict(variables, params=params), batch, train=True,
                           step=step, stage=stage, mutable=["batch_stats"])
      return sum(v.mean() for v in out.losses.values())
    return jax.value_and_grad(loss)(params)

  def norms(g):
    return (sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g["background_ae"])),
            sum(jnp.sum(x ** 2) for x in jax.tree.leaves(
                g["glimpse_generator"])))

  bg9, fg9 = norms(grads(jnp.int32(9))[1])
  bg10, fg10 = norms(grads(jnp.int32(10))[1])
  assert float(bg9) == 0 and float(bg10) > 0
  assert float(fg9) > 0 and float(fg10) > 0
  # The trainer's static stages (`training_stages`) compute the same.
  assert model.training_stages() == (10,)
  for step, stage in ((9, 0), (10, 1)):
    chex.assert_trees_all_close(grads(jnp.int32(step), stage),
                                grads(jnp.int32(step)), rtol=1e-5, atol=1e-8)
  assert _model(background_training="joint").training_stages() == ()
  assert _model(background_training="frozen").training_stages() == ()
  assert _model(background_training="curriculum",
                phase="background").training_stages() == ()
  # The trainer leaves the autoencoder out of phase 2's Adam update.
  assert model.frozen_parameters(0) == ("background_ae",)
  assert model.frozen_parameters(1) == model.frozen_parameters(None) == ()
  assert _model(background_training="frozen").frozen_parameters() == (
      "background_ae",)
  assert _model(background_training="joint").frozen_parameters(0) == ()
  assert _model(background_training="curriculum",
                phase="background").frozen_parameters(0) == ()


def test_background_phase():
  model = _model(phase="background")
  batch = _batch()
  shapes = jax.eval_shape(lambda: _init(model, batch))
  assert set(shapes["params"]) == {"background_ae"}
  variables = {"params": {"background_ae": _tiny_variables()["params"][
      "background_ae"]}}
  out = model.apply(variables, batch, train=True)
  assert set(out.losses) == {"background"}
  assert out.masks.shape == (2, 2, 32, 32, 1)
  np.testing.assert_allclose(out.masks.sum(1), 1.0, atol=1e-6)


def test_background_weights_initialise_the_autoencoder(tmp_path):
  batch = _batch()
  trained = jax.tree.map(lambda p: p + 0.5,  # "pretrained"
                         _tiny_variables()["params"])
  path = str(tmp_path / "bg.npz")
  np.savez(path, **convert.background_weights(trained))
  model = _model(background_weights=path)
  variables = jax.jit(lambda b: _init(model, b))(batch)
  chex.assert_trees_all_close(variables["params"]["background_ae"],
                              trained["background_ae"])
  missing = _model(background_weights=str(tmp_path / "nope.npz"))
  with pytest.raises(FileNotFoundError, match="nope.npz.*background_weights"
                     "|background_weights.*nope.npz"):
    _init(missing, batch)


def test_precomputed_background_and_errors():
  model = _model(background_model=False)
  batch = model.dummy_batch(2)
  assert batch["background"].shape == (2, 32, 32, 3)
  shapes = jax.eval_shape(lambda: _init(model, batch))
  assert "background_ae" not in shapes["params"]
  variables = _without(_tiny_variables(), "background_ae")
  bg = np.full((2, 32, 32, 4), 0.25, np.float32)
  out = model.apply(variables, {**_batch(), "background": bg}, train=False)
  # alpha_0 = e^11: the reconstruction is the background.
  np.testing.assert_allclose(out.recon, 0.25, atol=1e-3)
  with pytest.raises(ValueError, match="needs a 'background' entry"):
    model.apply(variables, _batch(), train=False)
  with pytest.raises(ValueError, match="32x32.*got 16x16"):
    model.apply(variables, _batch(size=16), train=False)
  with pytest.raises(ValueError, match="model.stn"):
    jax.eval_shape(lambda: _init(_model(stn="bilinear"), _batch()))


def test_no_transformer_ablation():
  model = _model(use_transformer=False)
  batch = _batch()
  shapes = jax.eval_shape(lambda: _init(model, batch))
  assert "transformer" not in shapes["params"]
  variables = _without(_tiny_variables(), "feature_vector_embedding",
                       "transformer", "latents_projection")
  _, state = model.apply(variables, batch, train=False,
                         mutable=["intermediates"])
  inter = state["intermediates"]
  np.testing.assert_array_equal(inter["latents"][0],
                                inter["pooled_queries"][0])


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("arg", [
    "", "sprites", "quick", "tiny,smoke", "shapestacks", "objects_room",
    "clevr",
    "clevrtex", "shapestacks,background", "clevr,background",
    "objects_room,no_transformer,no_entropy,anisotropic,k_plus_one",
    "shapestacks,frozen_background", "clevrtex,baseline,k_double"])
def test_experiment_presets(arg):
  c = experiment.get_config(arg)
  assert c.model.name == "ast_seg"
  assert c.optimizer.b2 == (0.999 if "background" in arg.split(",")
                            else 0.98)
  if arg == "clevr":
    assert (c.model.num_slots, c.data.image_size) == (10, 128)
    assert c.model.isotropic_scaling and not c.model.background_complexity
  if arg == "clevr,background":
    assert c.train.num_steps == 2_500 and c.model.phase == "background"
  if arg == "objects_room,no_transformer,no_entropy,anisotropic,k_plus_one":
    assert c.model.num_slots == 4 and not c.model.use_transformer
  if arg == "":  # CLEVR's protocol on the procedural CLEVR stand-in
    assert c.optimizer.learning_rate == 4e-5 and c.train.num_steps == 125_000
    assert c.optimizer.warmup_power == 2 and c.optimizer.late_decay_factor \
        == 0.1
    assert (c.data.name, c.data.image_size, c.model.num_slots) == (
        "clevr_like", 128, 10)
    assert c.data.max_objects == c.model.num_slots
    assert c.model.isotropic_scaling and not c.model.background_complexity
    assert c.curriculum.background.changes.train.num_steps == 2_500
  if arg == "sprites":
    assert (c.data.name, c.data.image_size, c.model.num_slots) == (
        "sprites", 64, 5)


def test_paper_schedule():
  """Quadratic warm-up over 5k steps, /10 from 90% of 125k (Sec. 5)."""
  c = experiment.get_config("")
  schedule = optimizer_lib.learning_rate_schedule(c.optimizer,
                                                  c.train.num_steps)
  lr = lambda s: float(schedule(s))
  assert lr(2_500) == pytest.approx(4e-5 * 0.25)
  assert lr(50_000) == pytest.approx(4e-5)
  assert lr(0.9 * 125_000) == pytest.approx(4e-6)


def test_quick_preset_builds():
  c = experiment.get_config("quick")
  model = run_lib.build(c).model
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      model.dummy_batch(2), train=False))
  n = sum(np.size(x) for x in jax.tree.leaves(shapes["params"]))
  assert n < 5_000_000


# ---------------------------------------------------------------- Segformer
def _write_safetensors(path, tensors):
  """A minimal safetensors writer (float32), for the loader's test."""
  import json  # pylint: disable=g-import-not-at-top
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    data = np.ascontiguousarray(value, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def test_segformer_mit_b3_shapes():
  """The paper's generator: MiT-B3 + MLP decoder, features at H/4."""
  model = _model(feature_generator="segformer", image_size=64,
                 glimpse_size=32)
  batch = _batch(size=64)
  out, variables = jax.eval_shape(lambda: model.init_with_output(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch,
      train=False))
  seg = variables["params"]["feature_and_attention_map_generator"]
  encoder = sum(np.size(v) for k, sub in seg.items() for v in
                jax.tree.leaves(sub) if not k.startswith(
                    ("linear_c", "linear_fuse", "batch_norm", "classifier")))
  # MiT-B3's encoder: 44.07M parameters (SegFormer paper: 44.0M).
  assert encoder == 44_072_128
  assert "batch_norm" in variables["batch_stats"][
      "feature_and_attention_map_generator"]
  assert out.masks.shape == (2, 4, 64, 64, 1)
  assert out.segmentations["attention"].shape == (2, 3, 64, 64, 1)
  _, state = jax.eval_shape(lambda v: model.apply(
      v, batch, train=False, mutable=["intermediates"]), variables)
  assert state["intermediates"]["feature_map"][0].shape == (
      2, 16, 16, model.feature_map_channels)


def test_segformer_weights_file(tmp_path):
  from ocjax.nn import segformer  # pylint: disable=g-import-not-at-top
  net = segformer.Segformer(7, variant="tiny")
  x = jnp.asarray(_batch(1)["image"])
  v = jitted(net.init, train=False)(jax.random.key(0), x)
  assert jitted(net.apply, train=False)(v, x).shape == (1, 8, 8, 7)
  pretrained = jax.tree.map(lambda p: p + 1.0, v["params"])
  hf = {"segformer." + k: a for k, a in segformer.to_hf(pretrained).items()}
  hf["classifier.weight"] = np.zeros((10, 16), np.float32)  # ignored
  path = str(tmp_path / "model.safetensors")
  _write_safetensors(path, hf)
  loaded = jitted(segformer.Segformer(7, weights=path, variant="tiny").init,
                  train=False)(jax.random.key(1), x)["params"]
  for key in pretrained:
    if key.startswith(("linear_c", "linear_fuse", "batch_norm",
                       "classifier")):  # the decode head stays random
      assert not np.allclose(jax.tree.leaves(loaded[key])[0],
                             jax.tree.leaves(pretrained[key])[0])
    else:
      chex.assert_trees_all_close(loaded[key], pretrained[key])
  with pytest.raises(FileNotFoundError, match="mit_b3.safetensors.*nothing "
                     "is downloaded"):
    segformer.Segformer(7, weights=str(tmp_path / "mit_b3.safetensors"),
                        variant="tiny").init(jax.random.key(1), x,
                                             train=False)
  with pytest.raises(ValueError, match="no tensor|shape"):
    segformer.Segformer(7, weights=path, variant="mit-b0").init(
        jax.random.key(1), x, train=False)


# ---------------------------------------------------------------- converter
def test_converter_background_autoencoder_names(tmp_path):
  """Official names and layouts of the AE-NE networks, and the export of a
  background checkpoint to ``model.background_weights``."""
  model = _model()
  variables = _tiny_variables()
  sd = convert.variables_to_torch(variables, model)
  # 32x32: 5 encoder blocks (5x5 s2 p2 down to 4x4, 4x4 s2 p1, 2x2).
  assert sd["netBE.background_encoder.0.downsample.0.weight"].shape == (
      64, 3 + 2, 5, 5)
  assert sd["netBE.background_encoder.4.downsample.0.weight"].shape == (
      16, 32 + 2, 2, 2)
  # Generator module 0 undoes the last encoder block (ConvTranspose2d
  # weights are [in, out, kh, kw]); module 4 is the output layer (no norm).
  assert sd["netBG.background_generator.0.upsample.0.weight"].shape == (
      16 + 2, 32, 2, 2)
  assert sd["netBG.background_generator.4.upsample.0.weight"].shape == (
      144 + 2, 4, 5, 5)
  assert "netBG.background_generator.4.upsample.1.weight" not in sd
  assert sd["netBG.background_generator.0.positional_encoding"].shape == (
      1, 2, 1, 1)
  back = convert.torch_to_variables(sd, model)
  chex.assert_trees_all_close(back["params"], jax.tree.map(
      np.asarray, variables["params"]))
  # An official phase-1 checkpoint (as .npz) -> the background weights file.
  official = {k: v for k, v in sd.items() if k.startswith(("netBE.",
                                                           "netBG."))}
  src = str(tmp_path / "model_final.npz")
  np.savez(src, **official)
  out = convert.export_background(src, str(tmp_path / "bg.npz"),
                                  image_size=32, complexity=False)
  with np.load(out) as data:
    want = convert.background_weights(variables["params"])
    assert set(data.files) == set(want)
    for k in want:
      np.testing.assert_array_equal(data[k], want[k])


# ------------------------------------------------------------------ figures
def _tile(figure, row, col, size):
  """Tile ``(row, col)`` of a `grids.tile_rows` figure of square cells."""
  y = grids.BORDER + row * (size + grids.BORDER)
  x = grids.BORDER + col * (size + grids.BORDER)
  return figure[y:y + size, x:x + size]


def _figure_shape(rows, cols, size):
  return (rows * (size + grids.BORDER) + grids.BORDER,
          cols * (size + grids.BORDER) + grids.BORDER, 3)


@pytest.fixture(scope="module")
def figure_output(tiny):
  """The tiny model's host output with ``alpha_0 = 1`` (eq. 17): the
  objects show instead of the e^11 background."""
  model, variables, batch = tiny
  params = dict(variables["params"],
                background_activation_logit=jnp.zeros((1, 1)))
  out = model.apply(dict(variables, params=params), batch, train=False)
  return model, batch, jax.device_get(out)


def test_extra_figures(figure_output):
  model, batch, out = figure_output
  k = model.num_slots
  figs = model.extra_figures(batch, out)
  assert set(figs) == {"attention_maps", "glimpses", "occlusion_order"}
  for img in figs.values():
    assert img.dtype == np.uint8
  # Input | K maps; input | (o_k, m_k) x K (8x8 enlarged 4x); input | L_0 |
  # K composites.
  assert figs["attention_maps"].shape == _figure_shape(2, k + 1, 32)
  assert figs["glimpses"].shape == _figure_shape(2, 1 + 2 * k, 32)
  assert figs["occlusion_order"].shape == _figure_shape(2, k + 2, 32)
  # The glimpses before the STN: o_k, then m_k in the object's colour.
  g = out.aux["glimpses"]  # [B, K, 8, 8, 4]
  np.testing.assert_array_equal(
      _tile(figs["glimpses"], 1, 3, 32),
      grids.upscale(grids.to_uint8(g[1, 1, ..., :3]), 4))
  np.testing.assert_array_equal(
      _tile(figs["glimpses"], 1, 4, 32),
      grids.upscale(grids.to_uint8(
          g[1, 1, ..., 3:] * ast_seg.object_colour(1) / 255.0), 4))
  # The last composite is the reconstruction (to the uint8 rounding).
  last = _tile(figs["occlusion_order"], 0, k + 1, 32).astype(int)
  assert np.abs(last - grids.to_uint8(out.recon[0])).max() <= 1
  # Phase 1 (the background alone) has none.
  assert model.extra_figures(batch, out.replace(aux={})) == {}


@pytest.mark.parametrize("grid", [16, 4])
def test_attention_marker_at_the_soft_argmax(grid):
  """Hand-made ``A_k``: each cross is centred on the pixel of its
  soft-argmax (eqs. 12-15), on its map and on the input, in its colour;
  ``grid = 4``: a Segformer-like map shown enlarged 4x."""
  size, f = 16, 16 // grid
  maps = np.zeros((1, 2, grid, grid), np.float32)
  maps[0, 0, 1, 2] = 1  # row 1, column 2
  maps[0, 1, 3, 0] = maps[0, 1, 3, 2] = 0.5  # centre of mass: column 1
  np.testing.assert_allclose(
      ast_seg.soft_argmax(maps)[0],
      np.asarray(ast_seg.position_map(grid, grid))[[1, 3], [2, 1]],
      atol=1e-6)
  fig = ast_seg.attention_figure(np.zeros((1, size, size, 3), np.float32),
                                 maps)
  assert fig.shape == _figure_shape(1, 3, size)
  overview = _tile(fig, 0, 0, size)
  for j, (r, c) in enumerate([(1, 2), (3, 1)]):
    colour = ast_seg.object_colour(j)
    # The centre of the enlarged pixel (rounded half up).
    r, c = f * r + f // 2, f * c + f // 2
    tile = _tile(fig, 0, j + 1, size)
    for t in (tile, overview):
      for y, x in ((r, c), (r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        np.testing.assert_array_equal(t[y, x], colour)
    # Elsewhere the map: grey, not the colour.
    marked = np.all(tile == colour, axis=-1)
    assert marked.sum() == 5 and marked[r, c]


def test_occlusion_sequence_builds_the_reconstruction(figure_output):
  model, _, out = figure_output
  k = model.num_slots
  for b in range(2):
    alpha = out.aux["activation"][b]
    order, seq = ast_seg.occlusion_sequence(out.masks[b], out.components[b],
                                            alpha)
    assert sorted(order) == list(range(k))
    assert np.all(np.diff(alpha[order]) >= 0)  # back to front
    assert seq.shape == (k + 1, 32, 32, 3) and seq.dtype == np.float32
    np.testing.assert_allclose(seq[0], out.components[b, 0], atol=1e-6)
    np.testing.assert_allclose(seq[-1], out.recon[b], atol=1e-5)


def test_occlusion_order_is_back_to_front():
  """Two overlapping squares (eq. 17): the lower activation is added first
  and shows in the overlap; the higher one then covers it."""
  s = 8
  alpha = np.array([5.0, 2.0])  # object 0 in front of object 1
  masks = np.zeros((2, s, s, 1))
  masks[0, 1:5, 1:5] = masks[1, 3:7, 3:7] = 1  # overlap [3:5, 3:5]
  layers = np.zeros((3, s, s, 3))
  layers[0] = 0.5  # grey background
  layers[1, ..., 0] = layers[2, ..., 1] = 1  # red, green
  unnormalised = np.concatenate([np.full((1, s, s, 1), 1e-3),
                                 alpha[:, None, None, None] * masks])
  w = unnormalised / unnormalised.sum(0)  # eq. 17
  recon = (w * layers).sum(0)  # eq. 18
  order, seq = ast_seg.occlusion_sequence(w, layers, alpha)
  np.testing.assert_array_equal(order, [1, 0])
  np.testing.assert_allclose(seq[0], layers[0], atol=1e-6)
  np.testing.assert_allclose(seq[1][3:5, 3:5], [[[0, 1, 0]] * 2] * 2,
                             atol=1e-3)  # the back object alone: green
  np.testing.assert_allclose(seq[1][1:3, 1:3], 0.5, atol=1e-6)  # not yet
  assert np.all(seq[2][3:5, 3:5, 0] > 0.7)  # the front one covers it
  np.testing.assert_allclose(seq[2], recon, atol=1e-6)


def test_trainer_writes_the_figures(tmp_path):
  """`loop.write_figures` calls the model's hook and writes its PNGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config = run_lib.load_experiment("experiments/ast_seg.py:tiny,smoke")
  run = run_lib.build(config)
  mesh = mesh_lib.make_mesh()
  state = run.init_state(mesh)
  written = {}

  class Writer:
    def images(self, step, images):
      assert step == 7
      written.update(images)

  loop.write_figures(run, str(tmp_path), Writer(), 7, state, _batch(), mesh)
  for name in ("reconstruction", "attention_maps", "glimpses",
               "occlusion_order"):
    for suffix in ("00000007", "latest"):
      path = os.path.join(tmp_path, "images", f"{name}_{suffix}.png")
      np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                    written[name])
