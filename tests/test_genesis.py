"""GENESIS (v1) behaviour on a tiny configuration (parity is in *_parity.py)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from experiments import genesis as genesis_experiment
from ocjax import models
from ocjax.models import base
from ocjax.models import genesis
from ocjax.nn import batch_norm
from ocjax.nn import gated_conv

TINY = dict(num_slots=3, image_size=32, mask_latent_dim=8, latent_dim=8,
            encoder_channels=8, decoder_channels=8)


def _model(**kw):
  return genesis.Genesis(**{**TINY, **kw})


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
def _tiny_variables():
  """Variables of the TINY model, initialised once (compiling an init takes
  much of this file's time on a loaded CPU); the variants share them."""
  return jax.jit(lambda b: _model().init(_rngs(), b, train=False))(_batch())


@functools.lru_cache(maxsize=None)
def _eager_reference():
  """An un-jitted training call (outputs, updated batch_stats), computed once
  for both jit variants."""
  return _model().apply(_tiny_variables(), _batch(), rngs=_rngs(1),
                        train=True, mutable=["batch_stats"])


@pytest.fixture(scope="module")
def tiny():
  return _model(), _tiny_variables()


class VariantsTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    """The variant (jitted or eager) against an eager reference call, in
    training mode with the running statistics updated."""
    model = _model()
    fn = self.variant(lambda v, b: model.apply(
        v, b, rngs=_rngs(1), train=True, mutable=["batch_stats"]))
    out, state = fn(_tiny_variables(), _batch())
    ref, ref_state = _eager_reference()
    chex.assert_trees_all_close(out.losses, ref.losses, rtol=1e-5, atol=1e-3)
    chex.assert_trees_all_close(out.masks, ref.masks, atol=1e-5)
    chex.assert_trees_all_close(out.recon, ref.recon, atol=1e-5)
    chex.assert_trees_all_close(state, ref_state, rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(
      ("default", dict(), True),
      ("independent_priors", dict(autoregressive_prior=False,
                                  component_prior=False), True),
      ("eval_mode", dict(), False),
  )
  def test_outputs(self, kw, train):
    model = _model(**kw)
    batch = _batch(b=2)
    variables = _tiny_variables()
    if not kw.get("autoregressive_prior", True):
      params = {k: v for k, v in variables["params"].items()
                if k not in ("prior", "component_prior_net")}
      variables = {**variables, "params": params}
    out = jax.jit(lambda v, b: model.apply(v, b, rngs=_rngs(), train=train))(
        variables, batch)
    b, k, s = 2, TINY["num_slots"], TINY["image_size"]
    chex.assert_shape(out.recon, (b, s, s, 3))
    chex.assert_shape(out.masks, (b, k, s, s, 1))
    chex.assert_shape(out.components, (b, k, s, s, 3))
    chex.assert_shape(out.latents,
                      (b, k, TINY["mask_latent_dim"] + TINY["latent_dim"]))
    chex.assert_tree_all_finite(out.losses)
    self.assertEqual(set(out.losses), {"nll", "kl", "kl_mask"})
    for v in out.losses.values():
      chex.assert_shape(v, (b,))
    self.assertEqual(set(out.segmentations), set(model.segmentation_names))
    np.testing.assert_allclose(np.asarray(out.masks).sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        out.masks, out.segmentations[model.reported_segmentation])
    # The last mask is the scope left after K - 1 steps (README §3.5).
    np.testing.assert_array_equal(out.aux["log_m"][:, -1],
                                  out.aux["log_s"][:, -2])
    chex.assert_shape(out.aux["log_s"], (b, k + 1, s, s, 1))


def test_running_statistics_follow_torch():
  """Momentum 0.1 and the unbiased variance in the running variance; batch
  statistics (biased variance) in the normalisation; eval uses the running
  ones; nothing is updated unless ``batch_stats`` is mutable."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 6)) * 2 + 1
  bn = batch_norm.BatchNorm()
  v = bn.init(jax.random.key(1), x, use_running_average=True)
  y, state = bn.apply(v, x, use_running_average=False,
                      mutable=["batch_stats"])
  xs = np.asarray(x, np.float64).reshape(-1, 6)
  n = xs.shape[0]
  mean, var = xs.mean(0), xs.var(0)
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean,
                             rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"],
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  assert int(state["batch_stats"]["num_batches_tracked"]) == 1
  np.testing.assert_allclose(
      np.asarray(y).reshape(-1, 6), (xs - mean) / np.sqrt(var + 1e-5),
      atol=1e-5)
  # Training mode without a mutable collection: same output, no update.
  y2 = bn.apply(v, x, use_running_average=False)
  np.testing.assert_array_equal(y, y2)
  # Evaluation mode: the running statistics.
  y3 = bn.apply({**v, **state}, x, use_running_average=True)
  rm, rv = state["batch_stats"]["mean"], state["batch_stats"]["var"]
  np.testing.assert_allclose(y3, (x - rm) / np.sqrt(rv + 1e-5), atol=1e-5)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(tiny):
  model, variables = tiny
  batch = _batch(seed=3)
  _, state = jax.jit(lambda v, b: model.apply(
      v, b, rngs=_rngs(), train=True, mutable=["batch_stats"]))(variables,
                                                                 batch)
  counts = jax.tree.leaves(jax.tree.map(
      lambda a: a, {k: v for k, v in state["batch_stats"].items()}))
  assert any(np.asarray(c).dtype == np.int32 and int(c) == 1 for c in counts)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         state["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every buffer moved
  _, state_eval = jax.jit(lambda v, b: model.apply(
      v, b, rngs=_rngs(), train=False, mutable=["batch_stats"]))(variables,
                                                                  batch)
  chex.assert_trees_all_equal(state_eval["batch_stats"],
                              variables["batch_stats"])
  # The declared mutable collections are what init creates.
  assert set(model.mutable_collections) == set(variables) - {"params"}


def test_instance_norm_has_no_batch_stats():
  model = _model(encoder_norm="in", decoder_norm="in")
  shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=False),
                          _batch())
  assert set(shapes) == {"params"}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_mask_vae_layouts(size):
  """The official per-size layouts (``sylvester/VAE.py``): the encoder ends
  on a 1x1 map and the decoder returns to the image size."""
  k, strides = gated_conv.mask_vae_layout(size)
  assert size // np.prod(strides) == k
  enc = gated_conv.GatedEncoder(size)
  dec = gated_conv.GatedDecoder(size)
  x = jnp.zeros((2, size, size, 3))
  h = jax.eval_shape(lambda: enc.init_with_output(jax.random.key(0), x,
                                                  False)[0])
  assert h.shape == (2, 256)
  y = jax.eval_shape(lambda: dec.init_with_output(
      jax.random.key(0), jnp.zeros((2, 8)), False)[0])
  assert y.shape == (2, size, size, 1)
  with pytest.raises(ValueError, match="supports images"):
    gated_conv.mask_vae_layout(48)


def test_injected_noise_replaces_the_draws(tiny):
  model, variables = tiny
  b, k = 2, TINY["num_slots"]
  noise = dict(mask_eps=jnp.zeros((b, k, TINY["mask_latent_dim"])),
               component_eps=jnp.zeros((b, k, TINY["latent_dim"])))
  out = model.apply(variables, _batch(), noise=noise, train=False)
  m = TINY["mask_latent_dim"]
  np.testing.assert_allclose(out.latents[..., :m], out.aux["mask_mu"],
                             atol=1e-6)
  np.testing.assert_allclose(out.latents[..., m:], out.aux["comp_mu"],
                             atol=1e-6)


def test_wrong_image_size_is_a_clear_error(tiny):
  model, variables = tiny
  with pytest.raises(ValueError, match=r"32x32 images .*got 64x64"):
    model.apply(variables, _batch(size=64), rngs=_rngs(), train=False)


def test_sampling(tiny):
  model, variables = tiny
  assert base.can_sample(model)
  out = jax.jit(lambda v: model.apply(v, 4, rngs=_rngs(4),
                                      method=genesis.Genesis.sample))(
                                          variables)
  k, s = TINY["num_slots"], TINY["image_size"]
  chex.assert_shape(out.image, (4, s, s, 3))
  chex.assert_shape(out.masks, (4, k, s, s, 1))
  chex.assert_shape(out.components, (4, k, s, s, 3))
  chex.assert_shape(out.latents,
                    (4, k, TINY["mask_latent_dim"] + TINY["latent_dim"]))
  np.testing.assert_allclose(np.asarray(out.masks).sum(1), 1.0, atol=1e-5)
  assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1
  # Sampling reads the running statistics and never writes them.
  _, state = model.apply(variables, 4, rngs=_rngs(4),
                         method=genesis.Genesis.sample,
                         mutable=["batch_stats"])
  chex.assert_trees_all_equal(state["batch_stats"], variables["batch_stats"])


def test_experiment_config_builds_the_model():
  """``experiments/genesis.py:quick,tiny,smoke``: fields = class
  attributes; the model initialises and trains a step's forward."""
  c = genesis_experiment.get_config("quick,tiny,smoke")
  assert c.model.name == "genesis" and c.data.image_size == 32
  model = models.build(c.model)
  assert isinstance(model, genesis.Genesis)
  known = (set(genesis.Genesis.__dataclass_fields__) - {"parent", "name"}
           - set(base.ObjectCentricModel.__annotations__))
  assert set(c.model) - {"name"} == known
  assert model == _model()  # the tiny option is this file's TINY model
  variables = _tiny_variables()
  out, state = jax.jit(lambda v, b: model.apply(
      v, b, rngs=_rngs(1), train=True,
      mutable=list(model.mutable_collections)))(variables,
                                                model.dummy_batch(2))
  chex.assert_tree_all_finite(out.losses)
  assert set(state) == {"batch_stats"}
  for preset, (k, size) in {"objects_room": (7, 64),
                            "multi_dsprites": (5, 64),
                            "tetrominoes": (4, 32), "clevr6": (7, 128),
                            "quick": (6, 32)}.items():
    c = genesis_experiment.get_config(preset)
    assert (c.model.num_slots, c.model.image_size) == (k, size), preset
  assert genesis_experiment.get_config("quick").train.grad_accum_steps == 1
  c = genesis_experiment.get_config("instance_norm,independent_prior")
  assert c.model.encoder_norm == "in" and not c.model.autoregressive_prior


def test_param_count_of_the_paper_model():
  """12,620,548 parameters at 64x64, K = 7 (the official model's count)."""
  model = genesis.Genesis()
  shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=False),
                          _batch(b=1, size=64))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  assert n == 12_620_548


def _torch_conv_transpose(x, kernel, stride, padding, output_padding):
  """PyTorch's ConvTranspose2d (scatter-layout kernel ``[k, k, I, O]``) as
  the zero-dilated correlation with the flipped kernel (README §3.3)."""
  k = kernel.shape[0]
  lo, hi = k - 1 - padding, k - 1 - padding + output_padding
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1), ((lo, hi), (lo, hi)),
      lhs_dilation=(stride, stride),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_gated_transposed_layers_equal_torch_transposed_convolutions():
  """Stride-1 transposed conv, and the 1x1 -> k x k layer as a matmul."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  conv = gated_conv.ConvTranspose1x(4)
  p = conv.init(jax.random.key(1), x)["params"]
  np.testing.assert_allclose(
      conv.apply({"params": p}, x),
      _torch_conv_transpose(x, p["kernel"], 1, 2, 0) + p["bias"], atol=1e-5)
  z = jax.random.normal(jax.random.key(2), (2, 5))
  layer = gated_conv.GatedVectorToMap(3, kernel_size=4)
  p = layer.init(jax.random.key(3), z)["params"]
  kernel = p["kernel"].reshape(5, 4, 4, 6).transpose(1, 2, 0, 3)  # [k,k,I,O]
  y = _torch_conv_transpose(z[:, None, None, :], kernel, 1, 0, 0) + p["bias"]
  h, g = jnp.split(y, 2, axis=-1)
  np.testing.assert_allclose(layer.apply({"params": p}, z),
                             h * jax.nn.sigmoid(g), atol=1e-5)
  x = jax.random.normal(jax.random.key(4), (2, 4, 4, 3))
  layer = gated_conv.GatedMapToVector(3)
  p = layer.init(jax.random.key(5), x)["params"]
  y = jax.lax.conv_general_dilated(
      x, p["kernel"].reshape(4, 4, 3, 6), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))[:, 0, 0] + p["bias"]
  h, g = jnp.split(y, 2, axis=-1)
  np.testing.assert_allclose(layer.apply({"params": p}, x),
                             h * jax.nn.sigmoid(g), atol=1e-5)
