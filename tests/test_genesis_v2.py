"""GENESIS-V2 behaviour on a tiny configuration (parity is in *_parity.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from ocjax.models import genesis_v2

TINY = dict(num_slots=3, image_size=32, feat_dim=16, decoder_channels=16)


def _model(**kw):
  return genesis_v2.GenesisV2(**{**TINY, **kw})


def _rngs(seed=0):
  k = jax.random.key(seed)
  return {n: jax.random.fold_in(k, i)
          for i, n in enumerate(("params", "icsbp", "sample"))}


def _batch(b=2, size=32, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (b, size, size, 3))
  return {"image": x}


@pytest.fixture(scope="module")
def tiny():
  model = _model()
  params = jax.jit(model.init)(_rngs(), _batch())["params"]
  return model, params


class VariantsTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    model = _model()
    batch = _batch()
    params = jax.jit(model.init)(_rngs(), batch)["params"]
    fn = self.variant(lambda p, b: model.apply({"params": p}, b,
                                               rngs=_rngs(1)))
    out = fn(params, batch)
    # The reference runs op by op (no jit), so the jitted variant is checked
    # against something it does not share a compilation with.
    with jax.disable_jit():
      ref = model.apply({"params": params}, batch, rngs=_rngs(1))
    # KL is a difference of log-densities: compare it absolutely too.
    chex.assert_trees_all_close(out.losses, ref.losses, rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(out.masks, ref.masks, atol=1e-6)

  @parameterized.named_parameters(
      ("gaussian", dict()),
      ("laplacian_no_semiconv", dict(kernel="laplacian", semiconv=False)),
      ("epanechnikov_independent", dict(kernel="epanechnikov",
                                        autoregressive_prior=False)),
      ("mask_loss", dict(mask_consistency=True)),
  )
  def test_variant_outputs(self, kw):
    model = _model(**kw)
    batch = _batch(b=2)
    out, params = jax.jit(
        lambda b: model.init_with_output(_rngs(), b))(batch)
    del params
    b, k, s = 2, TINY["num_slots"], TINY["image_size"]
    chex.assert_shape(out.recon, (b, s, s, 3))
    chex.assert_shape(out.masks, (b, k, s, s, 1))
    chex.assert_shape(out.components, (b, k, s, s, 3))
    chex.assert_shape(out.latents, (b, k, TINY["feat_dim"]))
    chex.assert_tree_all_finite(out.losses)
    for masks in out.segmentations.values():
      np.testing.assert_allclose(np.asarray(masks).sum(1), 1.0, atol=1e-5)
    expected = {"nll", "kl"} | ({"kl_mask"} if kw.get("mask_consistency")
                                else set())
    self.assertEqual(set(out.losses), expected)
    for v in out.losses.values():
      chex.assert_shape(v, (b,))


def test_wrong_image_size_is_a_clear_error(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"32x32 images .*got 64x64"):
    model.apply({"params": params}, _batch(size=64), rngs=_rngs())


def test_subpixel_and_dilated_decoders_agree(tiny):
  _, params = tiny
  batch = _batch()
  outs = [jax.jit(lambda p, b, m=_model(subpixel_deconv=s): m.apply(
      {"params": p}, b, rngs=_rngs(3)))(params, batch) for s in (True, False)]
  np.testing.assert_allclose(outs[0].recon, outs[1].recon, atol=2e-5)
  np.testing.assert_allclose(outs[0].losses["nll"], outs[1].losses["nll"],
                             rtol=1e-5)


def test_flexible_k(tiny):
  model, params = tiny
  batch = _batch(b=3)
  fixed = jax.jit(lambda p, b: model.apply({"params": p}, b,
                                           rngs=_rngs(2)))(params, batch)
  flex = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=_rngs(2),
                                          flexible=True))(params, batch)
  used = np.asarray(flex.aux["num_slots_used"])
  assert ((1 <= used) & (used <= TINY["num_slots"])).all()
  np.testing.assert_array_equal(fixed.aux["num_slots_used"], 3)
  m = np.asarray(flex.segmentations["attention"])[..., 0]
  pi = np.asarray(flex.masks)[..., 0]
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-5)
  for i, u in enumerate(used):
    assert (m[i, u:] == 0).all() and (pi[i, u:] == 0).all()
    # Accepted masks have at least min_mask_pixels of mass.
    assert (m[i, :u - 1].sum((1, 2)) >= 20.0).all()


def test_flexible_k_stops_on_untrained_model():
  """Coordinate embeddings make masks of ~1.1/K of the image (~145 pixels for
  K = 8 on 32x32); the scope shrinks, so a 120-pixel threshold stops early."""
  model = _model(num_slots=8, min_mask_pixels=120.0)
  batch = _batch(b=2)
  params = jax.jit(model.init)(_rngs(), batch)["params"]
  flex = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=_rngs(5),
                                          flexible=True))(params, batch)
  used = np.asarray(flex.aux["num_slots_used"])
  assert ((1 <= used) & (used < 8)).all(), used


def test_sampling(tiny):
  model, params = tiny
  out = jax.jit(lambda p: model.apply({"params": p}, 4, rngs=_rngs(4),
                                      method=genesis_v2.GenesisV2.sample))(
                                          params)
  chex.assert_shape(out.image, (4, 32, 32, 3))
  chex.assert_shape(out.masks, (4, 3, 32, 32, 1))
  chex.assert_shape(out.latents, (4, 3, 16))
  np.testing.assert_allclose(np.asarray(out.masks).sum(1), 1.0, atol=1e-5)
  assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1


def test_training_lowers_the_loss_on_a_fixed_batch(tiny):
  model, params = tiny
  batch = _batch(b=4, seed=1)
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      out = model.apply({"params": p}, batch, rngs=_rngs(7))
      return jnp.mean(out.losses["nll"]) + jnp.mean(out.losses["kl"])
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  losses = []
  for _ in range(15):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  # The NLL of a perfect reconstruction is sum log(sigma sqrt(2 pi)); what
  # training can remove is the rest (and the KL).
  floor = 32 * 32 * 3 * float(np.log(0.7 * np.sqrt(2 * np.pi)))
  reducible = np.array(losses) - floor
  assert reducible[-1] < 0.85 * reducible[0], losses
  assert max(losses[-5:]) < losses[0], losses


def test_param_count_of_the_paper_model():
  """2,729,422 parameters at 64x64, K = 7 (the official model's count)."""
  model = genesis_v2.GenesisV2()
  shapes = jax.eval_shape(model.init, _rngs(), _batch(b=1, size=64))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  assert n == 2_729_422


def _loss_and_grads(model, params, batch):
  def loss_fn(p):
    out = model.apply({"params": p}, batch, rngs=_rngs(9))
    return jnp.mean(out.losses["nll"]) + jnp.mean(out.losses["kl"])
  return jax.jit(jax.value_and_grad(loss_fn))(params)


def test_remat_gives_the_same_gradients(tiny):
  model, params = tiny
  batch = _batch(b=2, seed=3)
  l0, g0 = _loss_and_grads(model, params, batch)
  l1, g1 = _loss_and_grads(_model(remat=True), params, batch)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  # Slots are decoded one by one: float sums in another order.
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    scale = float(np.abs(b).max()) + 1e-12
    assert float(np.abs(a - b).max()) <= 1e-4 * scale


def test_bfloat16_compute_stays_close_to_float32(tiny):
  """bf16 convolutions/dense layers, float32 parameters and mixture maths."""
  model, params = tiny
  batch = _batch(b=2, seed=3)
  l32, _ = _loss_and_grads(model, params, batch)
  lbf, gbf = _loss_and_grads(_model(dtype=jnp.bfloat16), params, batch)
  assert lbf.dtype == jnp.float32
  assert float(lbf) == pytest.approx(float(l32), rel=2e-2)
  chex.assert_tree_all_finite(gbf)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(gbf))
