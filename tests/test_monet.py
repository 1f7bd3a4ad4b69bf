"""MONet-G behaviour on a tiny configuration (parity is in *_parity.py)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from experiments import monet as monet_experiment
from ocjax import models
from ocjax.models import base
from ocjax.models import monet
from ocjax.nn import broadcast_decoder
from ocjax.nn import component_vae
from ocjax.nn import stick_breaking

TINY = dict(num_slots=3, image_size=32, filter_start=8, latent_dim=8,
            encoder_channels=8, decoder_channels=8)


def _model(**kw):
  return monet.MONet(**{**TINY, **kw})


def _rngs(seed=0):
  # RBG keys: XLA compiles their random bits ~2x faster than threefry's,
  # which dominates the compile time of `init` here.
  k = jax.random.key(seed, impl="rbg")
  return {n: jax.random.fold_in(k, i)
          for i, n in enumerate(("params", "sample"))}


def _batch(b=2, size=32, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (b, size, size, 3))
  return {"image": x}


@functools.lru_cache(maxsize=None)
def _tiny_params():
  """Parameters of the TINY model, initialised once (compiling an init takes
  most of this file's time on a loaded CPU); every variant shares them."""
  return jax.jit(_model().init)(_rngs(), _batch())["params"]


@functools.lru_cache(maxsize=None)
def _eager_reference():
  """An un-jitted call, computed once for both jit variants."""
  return _model().apply({"params": _tiny_params()}, _batch(), rngs=_rngs(1))


@pytest.fixture(scope="module")
def tiny():
  return _model(), _tiny_params()


class VariantsTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    """The variant (jitted or eager) against an eager reference call."""
    model = _model()
    fn = self.variant(lambda p, b: model.apply({"params": p}, b,
                                               rngs=_rngs(1)))
    out = fn(_tiny_params(), _batch())
    ref = _eager_reference()
    chex.assert_trees_all_close(out.losses, ref.losses, rtol=1e-5, atol=1e-3)
    chex.assert_trees_all_close(out.masks, ref.masks, atol=1e-5)
    chex.assert_trees_all_close(out.recon, ref.recon, atol=1e-5)

  @parameterized.named_parameters(
      ("softmax", dict()),
      ("scope", dict(mask_prior="scope")),
      ("rolled", dict(scan_unroll=1)),
  )
  def test_outputs(self, kw):
    model = _model(**kw)
    batch = _batch(b=2)
    out = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=_rngs()))(
        _tiny_params(), batch)
    b, k, s, l = 2, TINY["num_slots"], TINY["image_size"], TINY["latent_dim"]
    chex.assert_shape(out.recon, (b, s, s, 3))
    chex.assert_shape(out.masks, (b, k, s, s, 1))
    chex.assert_shape(out.components, (b, k, s, s, 3))
    chex.assert_shape(out.latents, (b, k, l))
    chex.assert_tree_all_finite(out.losses)
    self.assertEqual(set(out.losses), {"nll", "kl", "kl_mask"})
    for v in out.losses.values():
      chex.assert_shape(v, (b,))
    self.assertEqual(set(out.segmentations), set(model.segmentation_names))
    for masks in out.segmentations.values():
      chex.assert_shape(masks, (b, k, s, s, 1))
      np.testing.assert_allclose(np.asarray(masks).sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        out.masks, out.segmentations[model.reported_segmentation])
    # The last attention mask is the remaining scope.
    np.testing.assert_array_equal(out.aux["log_m"][:, -1],
                                  out.aux["log_s"][:, -1])
    assert float(out.losses["kl_mask"].min()) >= 0.0


def test_stick_breaking_sums_to_one():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 4, 4, 1)) * 3
  log_m, log_s = stick_breaking.log_stick_breaking(logits)
  chex.assert_shape(log_m, (2, 5, 4, 4, 1))
  chex.assert_shape(log_s, (2, 6, 4, 4, 1))
  np.testing.assert_allclose(np.exp(log_m).sum(1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(log_s[:, 0], 0.0)
  np.testing.assert_array_equal(log_m[:, -1], log_s[:, -2])
  # The same masks step by step.
  log_scope = jnp.zeros_like(logits[:, 0])
  for k in range(4):
    np.testing.assert_allclose(
        log_m[:, k], log_scope + jax.nn.log_sigmoid(logits[:, k]), atol=1e-6)
    log_scope = log_scope + jax.nn.log_sigmoid(-logits[:, k])
  np.testing.assert_allclose(log_m[:, 4], log_scope, atol=1e-6)


def test_scan_unroll_changes_nothing(tiny):
  model, params = tiny
  batch = _batch(seed=2)
  outs = [jax.jit(lambda p, m=_model(scan_unroll=u): m.apply(
      {"params": p}, batch, rngs=_rngs(3)))(params) for u in (0, 1)]
  np.testing.assert_allclose(outs[0].losses["nll"], outs[1].losses["nll"],
                             rtol=1e-6)
  np.testing.assert_allclose(outs[0].masks, outs[1].masks, atol=1e-6)


def test_injected_noise_replaces_the_draw(tiny):
  model, params = tiny
  batch = _batch()
  eps = jnp.zeros((2, TINY["num_slots"], TINY["latent_dim"]))
  out = model.apply({"params": params}, batch, noise=dict(component_eps=eps))
  np.testing.assert_allclose(out.latents, out.aux["mu"], atol=1e-6)


def test_wrong_image_size_is_a_clear_error(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"32x32 images .*got 64x64"):
    model.apply({"params": params}, _batch(size=64), rngs=_rngs())


@pytest.mark.parametrize("mask_prior", ["softmax", "scope"])
def test_sampling(tiny, mask_prior):
  _, params = tiny
  model = _model(mask_prior=mask_prior)
  assert base.can_sample(model)
  out = jax.jit(lambda p: model.apply({"params": p}, 4, rngs=_rngs(4),
                                      method=monet.MONet.sample))(params)
  chex.assert_shape(out.image, (4, 32, 32, 3))
  chex.assert_shape(out.masks, (4, 3, 32, 32, 1))
  chex.assert_shape(out.components, (4, 3, 32, 32, 3))
  chex.assert_shape(out.latents, (4, 3, TINY["latent_dim"]))
  np.testing.assert_allclose(np.asarray(out.masks).sum(1), 1.0, atol=1e-5)
  assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1


def test_experiment_config_builds_the_model():
  """``experiments/monet.py:quick,tiny,smoke``: fields = class attributes."""
  c = monet_experiment.get_config("quick,tiny,smoke")
  assert c.model.name == "monet" and c.data.image_size == 32
  assert c.model.image_size == 32 and c.model.num_slots == 3
  model = models.build(c.model)
  assert isinstance(model, monet.MONet)
  known = (set(monet.MONet.__dataclass_fields__) - {"parent", "name"}
           - set(base.ObjectCentricModel.__annotations__))
  assert set(c.model) - {"name"} == known
  # The tiny option is the TINY model of this file: its parameters fit.
  assert model == _model()
  batch = model.dummy_batch(2)
  shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=False),
                          batch)
  assert set(shapes) == {"params"}  # no mutable collections
  out = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=_rngs(1),
                                         train=True))(_tiny_params(), batch)
  chex.assert_tree_all_finite(out.losses)
  for preset, (k, size) in {"objects_room": (7, 64),
                            "multi_dsprites": (5, 64),
                            "tetrominoes": (4, 32), "clevr6": (7, 128),
                            "quick": (6, 32)}.items():
    c = monet_experiment.get_config(preset)
    assert (c.model.num_slots, c.model.image_size) == (k, size), preset
  assert monet_experiment.get_config("scope_prior").model.mask_prior == "scope"
  with pytest.raises(ValueError, match="preset"):
    monet_experiment.get_config("no_such_preset")


@pytest.mark.slow
def test_training_lowers_the_loss_on_a_fixed_batch(tiny):
  model, params = tiny
  batch = _batch(b=4, seed=1)
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      out = model.apply({"params": p}, batch, rngs=_rngs(7))
      return sum(jnp.mean(v) for v in out.losses.values())
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  losses = []
  for _ in range(15):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  floor = 32 * 32 * 3 * float(np.log(0.7 * np.sqrt(2 * np.pi)))
  reducible = np.array(losses) - floor
  assert reducible[-1] < 0.9 * reducible[0], losses


def test_param_count_of_the_paper_model():
  """974,085 parameters at 64x64, K = 7 (the official model's count)."""
  model = monet.MONet()
  shapes = jax.eval_shape(model.init, _rngs(), _batch(b=1, size=64))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  assert n == 974_085


def test_factorised_broadcast_conv_equals_the_plain_convolution():
  """`component_vae.BroadcastConv` (matmul + shared coordinate conv) is the
  3x3 valid convolution of the tiled latents and coordinates."""
  z = jax.random.normal(jax.random.key(0), (3, 5))
  conv = component_vae.BroadcastConv(7, size=12)
  params = conv.init(jax.random.key(1), z)
  ours = conv.apply(params, z)
  tiled = broadcast_decoder.spatial_broadcast(z, 12)
  plain = jax.lax.conv_general_dilated(
      tiled, params["params"]["kernel"], (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["params"]["bias"]
  chex.assert_shape(ours, (3, 10, 10, 7))
  np.testing.assert_allclose(ours, plain, atol=1e-5)
