"""APEX (paper 000): property tests of its equations and of the model.

No reference implementation exists (docs/apex.md), so each equation is
checked by the properties the paper states: Eqs. (8)-(12) give non-negative
masks that sum to one with the background, absent objects occupy nothing and
slot order does not matter; Eq. (18) is the unexplained fraction of a
proposal; Eq. (21) vanishes for one-hot masks; inference is causal (Eq. 13);
the ablation switches of Table III change the model.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from ocjax import run as run_lib
from ocjax.models import apex
from ocjax.nn import dla
from ocjax.nn import mask_normalisation as mn
from ocjax.nn import stn

C = 5.0


def _objects(key, b=2, k=4, h=12, w=12):
  """Random boxes and glimpse logits, written into the frame as the model
  does: ``(alpha_img, softplus_img, sigmoid_img, boxes)``."""
  k1, k2, k3 = jax.random.split(key, 3)
  alpha = C * jnp.tanh(3 * jax.random.normal(k1, (b, k, 6, 6, 1)))
  scale = jax.random.uniform(k2, (b, k, 2), minval=0.2, maxval=0.6)
  centre = jax.random.uniform(k3, (b, k, 2), minval=-0.6, maxval=0.6)
  boxes = jnp.concatenate([scale, centre], -1)
  paste = lambda x: stn.paste_boxes(x, boxes, h, w)
  return (paste(alpha + C) - C, paste(jax.nn.softplus(alpha)),
          paste(jax.nn.sigmoid(alpha)), boxes)


class MaskNormalisationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_partition_of_unity_and_non_negative(self):
    alpha_img, soft, sig, _ = _objects(jax.random.key(0))
    pres = jnp.array([[1.0, 0.3, 0.0, 1.0], [0.0, 0.0, 0.9, 0.5]])
    for log_m, log_bg, m_fg in (
        self.variant(mn.principled, static_argnums=3)(alpha_img, soft, pres,
                                                      C),
        self.variant(mn.scalor)(sig, pres)):
      m, bg = np.exp(log_m), np.exp(log_bg)
      assert np.all(m >= 0) and np.all(bg >= 0)
      np.testing.assert_allclose(m.sum(1) + bg, 1.0, atol=1e-6)
      np.testing.assert_allclose(m.sum(1), m_fg, atol=1e-6)

  def test_principled_follows_eqs_8_to_12(self):
    alpha_img, soft, _, _ = _objects(jax.random.key(1))
    pres = jnp.array([[1.0, 0.5, 0.0, 1.0], [1.0, 1.0, 0.2, 0.0]])
    log_m, log_bg, m_fg = mn.principled(alpha_img, soft, pres, C)
    p = np.asarray(pres)[:, :, None, None, None]
    want_fg = np.tanh(np.sum(np.asarray(soft) * p, 1))  # Eq. (8)
    hat = np.asarray(alpha_img) + 2 * C * p  # Eq. (9)
    m_hat = np.exp(hat) / np.exp(hat).sum(1, keepdims=True)  # Eq. (10)
    np.testing.assert_allclose(m_fg, want_fg, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(log_m), m_hat * want_fg[:, None],
                               rtol=1e-4, atol=1e-7)  # Eq. (11)
    np.testing.assert_allclose(np.exp(log_bg), 1 - want_fg, atol=1e-6)

  def test_absent_objects_occupy_nothing(self):
    alpha_img, soft, sig, _ = _objects(jax.random.key(2))
    none = jnp.zeros((2, 4))
    for log_m, log_bg, _ in (mn.principled(alpha_img, soft, none, C),
                             mn.scalor(sig, none)):
      assert np.all(np.exp(log_m) == 0)
      np.testing.assert_array_equal(np.exp(log_bg), 1.0)
    # One present object with positive logits: the absent ones' share is
    # below exp(-2c) of the foreground (Eq. 9's disjoint intervals).
    b, k, h, w = 1, 3, 12, 12
    boxes = jnp.array([[[0.5, 0.5, 0.0, 0.0]] * k])
    alpha = jnp.full((b, k, 6, 6, 1), C)
    paste = lambda x: stn.paste_boxes(x, boxes, h, w)
    pres = jnp.array([[1.0, 0.0, 0.0]])
    log_m, _, m_fg = mn.principled(paste(alpha + C) - C,
                                   paste(jax.nn.softplus(alpha)), pres, C)
    m = np.exp(log_m)
    assert np.all(m[:, 1:] <= np.exp(-2 * C) * np.asarray(m_fg)[:, None]
                  + 1e-7)
    # Outside every box the foreground is empty (zero-padded STN, Eq. 8).
    assert m_fg[0, 0, 0, 0] == 0 and m_fg[0, 6, 6, 0] > 0.99

  def test_slot_order_does_not_matter(self):
    alpha_img, soft, sig, _ = _objects(jax.random.key(3))
    pres = jnp.array([[1.0, 0.3, 0.0, 1.0], [0.0, 0.7, 0.9, 0.5]])
    perm = np.array([2, 0, 3, 1])
    for fn, args in ((lambda a, s, p: mn.principled(a, s, p, C),
                      (alpha_img, soft)),
                     (lambda s, p: mn.scalor(s, p), (sig,))):
      log_m, log_bg, _ = fn(*args, pres)
      log_m2, log_bg2, _ = fn(*(a[:, perm] for a in args), pres[:, perm])
      np.testing.assert_allclose(np.exp(log_m2), np.exp(log_m)[:, perm],
                                 atol=1e-6)
      np.testing.assert_allclose(np.exp(log_bg2), np.exp(log_bg), atol=1e-6)

  def test_gradients_are_finite_where_masks_vanish(self):
    alpha_img, soft, _, _ = _objects(jax.random.key(4))
    pres = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])

    def f(a, s, p):
      log_m, log_bg, m_fg = mn.principled(a, s, p, C)
      x = jnp.concatenate([log_m, log_bg[:, None]], 1)
      return jnp.sum(jax.nn.logsumexp(x, axis=1)) + jnp.sum(
          mn.entropy(log_m, m_fg))

    grads = jax.grad(f, argnums=(0, 1, 2))(alpha_img, soft, pres)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_context_is_the_unexplained_fraction():
  """Eq. (18)."""
  soft = jnp.zeros((1, 2, 4, 4, 1)).at[:, :, :2].set(1.0)  # top half
  top = jnp.zeros((1, 4, 4, 1)).at[:, :2].set(1.0)
  np.testing.assert_allclose(mn.context(jnp.ones((1, 4, 4, 1)), soft), 1.0)
  np.testing.assert_allclose(mn.context(1 - top, soft), 0.0)
  np.testing.assert_allclose(
      mn.context(jnp.zeros((1, 4, 4, 1)).at[:, :, :2].set(1.0), soft), 0.5)


def test_entropy_loss():
  """Eq. (21): zero for one-hot masks, -sum m_fg m log m otherwise."""
  one_hot = jnp.zeros((1, 2, 2, 2, 1)).at[:, 0].set(1.0)
  assert float(mn.entropy(mn.safe_log(one_hot), jnp.ones((1, 2, 2, 1)))[0]
               ) == 0.0
  m = jnp.full((1, 2, 2, 2, 1), 0.25)
  m_fg = jnp.full((1, 2, 2, 1), 0.5)
  want = -np.sum(0.5 * 0.25 * np.log(0.25)) * 2 * 4
  np.testing.assert_allclose(mn.entropy(jnp.log(m), m_fg), [want],
                             rtol=1e-6)


def test_box_crop_and_paste_match_grid_sample():
  key = jax.random.key(5)
  image = jax.random.uniform(key, (2, 16, 16, 3))
  boxes = jnp.array([[[0.5, 0.25, 0.1, -0.3], [0.3, 0.3, 0.0, 0.0]],
                     [[1.0, 1.0, 0.0, 0.0], [0.2, 0.6, -0.5, 0.4]]])
  crops = stn.crop_boxes(image, boxes, 8)
  for b in range(2):
    for n in range(2):
      sx, sy, tx, ty = np.asarray(boxes[b, n])
      theta = jnp.array([[[sx, 0, tx], [0, sy, ty]]])
      want = stn.grid_sample(image[b:b + 1],
                             stn.affine_grid(theta, 8, 8))[0]
      np.testing.assert_allclose(crops[b, n], want, atol=1e-5)
      pasted = stn.paste_boxes(crops[b:b + 1, n:n + 1], boxes[b:b + 1,
                                                              n:n + 1], 16,
                               16)[0, 0]
      inv = jnp.array([[[1 / sx, 0, -tx / sx], [0, 1 / sy, -ty / sy]]])
      want = stn.grid_sample(crops[b:b + 1, n], stn.affine_grid(inv, 16,
                                                                16))[0]
      np.testing.assert_allclose(pasted, want, atol=1e-5)


def test_assign_slots():
  free = jnp.array([[True, False, True, True], [False, False, False, True]])
  pres = jnp.array([[0.1, 0.9, 0.8, 0.75, 0.2], [0.99, 0.1, 0.1, 0.1, 0.1]])
  a = np.asarray(apex.assign_slots(free, pres, 0.7))  # [B, D, N]
  # Best first into the lowest free slot; 0.75 > 0.7 takes the third.
  want = np.zeros((2, 5, 4))
  want[0, 1, 0] = want[0, 2, 2] = want[0, 3, 3] = 1
  want[1, 0, 3] = 1
  np.testing.assert_array_equal(a, want)
  # No free slot, or nothing above the threshold: nothing joins.
  assert not np.any(apex.assign_slots(jnp.zeros((1, 3), bool),
                                      jnp.ones((1, 4)), 0.5))
  assert not np.any(apex.assign_slots(jnp.ones((1, 3), bool),
                                      jnp.full((1, 4), 0.6), 0.7))


def test_discovery_prior_is_annealed_as_scalor():
  """rho of Eq. (6): linear from the start value to the end value over the
  anneal steps, then the end value; the end value at evaluation."""
  rho = lambda step, n=500: float(apex.discovery_prior_schedule(
      step, 0.01, 0.1, n))
  np.testing.assert_allclose(rho(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(rho(250), 0.055, rtol=1e-6)
  np.testing.assert_allclose([rho(500), rho(10_000), rho(None)], 0.01,
                             rtol=1e-6)
  np.testing.assert_allclose(rho(0, n=0), 0.01, rtol=1e-6)  # fixed


def test_the_convlstm_loop_unrolled_equals_the_rolled_loop():
  video = jax.random.uniform(jax.random.key(0), (1, 3, 16, 16, 3))
  rolled = dla.SceneEncoder((4, 8), 8, unroll=1)
  unrolled = rolled.clone(unroll=0)
  variables = rolled.init(jax.random.key(1), video)
  np.testing.assert_allclose(unrolled.apply(variables, video),
                             rolled.apply(variables, video), atol=1e-6)


def test_relaxation_and_kl():
  assert float(apex.gumbel_temperature(0)) == 1.0
  np.testing.assert_allclose(apex.gumbel_temperature(10_000), 0.5**0.5,
                             rtol=1e-6)
  assert float(apex.gumbel_temperature(30_000)) == 0.5
  assert float(apex.gumbel_temperature(None)) == 0.5
  p = jnp.full((20_000,), 0.3)
  z = apex.relaxed_bernoulli(jax.random.key(0), p, jnp.float32(0.05))
  np.testing.assert_allclose(np.mean(np.asarray(z) > 0.5), 0.3, atol=0.02)
  np.testing.assert_allclose(apex.bernoulli_kl(p, p), 0.0, atol=1e-7)
  assert float(apex.bernoulli_kl(jnp.float32(0.9), jnp.float32(0.1))) > 1.0
  # The inclusive KL is KL(p || q).
  q = (jnp.array([0.5]), jnp.array([0.2]))
  pr = (jnp.array([0.0]), jnp.array([0.0]))
  from ocjax.objectives import kl as kl_lib
  np.testing.assert_allclose(apex.gaussian_kl(*q, *pr, True),
                             kl_lib.gaussian_kl(*pr, *q))
  np.testing.assert_allclose(apex.gaussian_kl(*q, *pr, False),
                             kl_lib.gaussian_kl(*q, *pr))


# ----------------------------------------------------------------- the model
def _tiny(options: str = ""):
  config = run_lib.load_experiment(
      "experiments/apex.py:tiny" + ("," + options if options else ""))
  return apex.Apex(**{k: (tuple(v) if isinstance(v, list) else v)
                      for k, v in config.model.to_dict().items()
                      if k not in ("name", "dtype")})


def _init(model, video):
  return jitted(model.init, train=True, step=0)(
      {"params": jax.random.key(1), "sample": jax.random.key(2)},
      {"video": video})


@pytest.fixture(scope="module")
def tiny_model():
  model = _tiny()
  video = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))
  return model, _init(model, video), video


def test_outputs_are_in_track_space(tiny_model):
  model, variables, video = tiny_model
  out = jitted(model.apply, train=True, step=0)(
      variables, {"video": video}, rngs={"sample": jax.random.key(3)})
  n = model.num_slots
  assert out.masks.shape == (2, 3, n + 1, 32, 32, 1)
  assert out.components.shape == (2, 3, n + 1, 32, 32, 3)
  assert out.latents.shape == (2, 3, n + 1, 5 + model.what_size)
  np.testing.assert_allclose(np.asarray(out.masks).sum(2), 1.0, atol=1e-5)
  assert np.all(np.asarray(out.masks) >= 0)
  assert set(out.losses) == {"nll", "kl", "entropy"}
  for v in out.losses.values():
    assert v.shape == (2,) and np.all(np.isfinite(v))
  # The reconstruction is the mixture's mean, in [0, 1].
  assert np.all((out.recon >= 0) & (out.recon <= 1))
  # A slot is present only where the filtering kept or assigned an object.
  pres = np.asarray(out.aux["z_pres"])
  assert pres.shape == (2, 3, n) and np.all((pres >= 0) & (pres <= 1))


def test_inference_is_causal(tiny_model):
  """Eq. (13): frame t's decomposition depends on frames <= t only."""
  model, variables, video = tiny_model
  other = video.at[:, 2].set(1.0 - video[:, 2])
  apply = jitted(model.apply, train=False)
  a = apply(variables, {"video": video})
  b = apply(variables, {"video": other})
  np.testing.assert_allclose(a.masks[:, :2], b.masks[:, :2], atol=1e-6)
  assert not np.allclose(a.masks[:, 2], b.masks[:, 2], atol=1e-4)


def test_gradients_are_finite(tiny_model):
  model, variables, video = tiny_model

  def loss(params):
    out = model.apply({"params": params}, {"video": video}, train=True,
                      step=0, rngs={"sample": jax.random.key(4)})
    return sum(jnp.mean(v) for v in out.losses.values())

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


@pytest.mark.parametrize("option", ["image_stn", "scalor_norm", "gaussian"])
def test_ablation_switches_change_the_model(tiny_model, option):
  model, variables, video = tiny_model
  ablated = _tiny(option)
  assert ablated != model
  a = jitted(model.apply, train=False)(variables, {"video": video})
  if option == "image_stn":  # the crop CNNs read 3 channels, not F
    variables = _init(ablated, video)
  b = jitted(ablated.apply, train=False)(variables, {"video": video})
  np.testing.assert_allclose(np.asarray(b.masks).sum(2), 1.0, atol=1e-5)
  assert all(np.all(np.isfinite(v)) for v in b.losses.values())
  assert not np.allclose(a.losses["nll"], b.losses["nll"])


def test_no_entropy_option_and_bad_fields():
  config = run_lib.load_experiment("experiments/apex.py:tiny,no_entropy")
  assert config.objective.weights.entropy == 0.0
  video = jnp.zeros((1, 2, 32, 32, 3))
  for field, value in (("mask_normalisation", "other"),
                       ("likelihood", "laplace"), ("grid_size", 3)):
    model = _tiny().clone(**{field: value})
    with pytest.raises(ValueError, match=field):
      model.init({"params": jax.random.key(0), "sample": jax.random.key(0)},
                 {"video": video})
