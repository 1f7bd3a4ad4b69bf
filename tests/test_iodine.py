"""IODINE and the iterative-inference machinery: the equations' properties.

No official numbers exist for IODINE in ../shared/fixtures, so each piece is
checked against its definition: the per-pixel mixture of paper 004 Eq. (1)
by brute force, its analytic gradients against `jax.grad`, the leave-one-out
likelihood by removing the slot, the KL in closed form, the r / R weighting
of Eq. (3), the refinement of Eq. (2), slot-order equivariance and the
stop-gradients on the refinement inputs.
"""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from ocjax import run as run_lib
from ocjax.models import iodine
from ocjax.nn import iterative_inference as ii
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

SIGMA = 0.3**0.5


def _mixture(rng, b=2, k=3, h=4, w=5, c=3):
  x = rng.random((b, h, w, c)).astype(np.float32)
  means = rng.random((b, k, h, w, c)).astype(np.float32)
  logits = rng.normal(size=(b, k, h, w, 1)).astype(np.float32)
  return x, means, logits


def test_pixel_mixture_is_eq1_by_brute_force():
  x, means, logits = _mixture(np.random.default_rng(0))
  log_p, joint = likelihood.pixel_mixture_log_probs(x, logits, means, SIGMA)
  x64, mu64, l64 = (a.astype(np.float64) for a in (x, means, logits))
  m = np.exp(l64) / np.exp(l64).sum(1, keepdims=True)
  dens = np.prod(np.exp(-(x64[:, None] - mu64) ** 2 / (2 * SIGMA**2))
                 / np.sqrt(2 * np.pi * SIGMA**2), axis=-1)  # [B, K, H, W]
  expected = np.log(np.sum(m[..., 0] * dens, axis=1))
  np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(joint, np.log(m[..., 0] * dens), rtol=1e-5,
                             atol=1e-5)


def test_likelihood_gradients_are_those_of_the_nll():
  x, means, logits = _mixture(np.random.default_rng(1))
  masks = jax.nn.softmax(logits[..., 0], axis=1)

  def nll(means, masks):  # -log sum_k m_k N_k, masks as free variables
    log_n = jnp.sum(likelihood.gaussian_log_prob(x[:, None], means, SIGMA),
                    -1)
    return -jnp.sum(jax.nn.logsumexp(jnp.log(masks) + log_n, axis=1))

  want_means, want_masks = jax.grad(nll, argnums=(0, 1))(means, masks)
  log_p, joint = likelihood.pixel_mixture_log_probs(x, logits, means, SIGMA)
  got_means, got_masks = ii.likelihood_gradients(
      x, means, jnp.log(masks), joint, log_p, SIGMA)
  np.testing.assert_allclose(got_means, want_means, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_masks[..., 0], want_masks, rtol=1e-4,
                             atol=1e-5)


def test_leave_one_out_removes_the_slot_and_renormalises():
  x, means, logits = _mixture(np.random.default_rng(2), k=4)
  _, joint = likelihood.pixel_mixture_log_probs(x, logits, means, SIGMA)
  log_masks = jax.nn.log_softmax(logits[..., 0], axis=1)
  loo = ii.leave_one_out_log_likelihood(logits[..., 0], joint, log_masks)
  for k in range(4):
    keep = [j for j in range(4) if j != k]
    want, _ = likelihood.pixel_mixture_log_probs(
        x, logits[:, keep], means[:, keep], SIGMA)
    np.testing.assert_allclose(loo[:, k], want, rtol=1e-5, atol=1e-5)
  one = ii.leave_one_out_log_likelihood(logits[:, :1, ..., 0], joint[:, :1],
                                        log_masks[:, :1])
  np.testing.assert_array_equal(one, 0.0)


def test_gaussian_kl_closed_form():
  rng = np.random.default_rng(3)
  mu, log_sigma = rng.normal(size=(2, 5, 7))
  p_mu, p_log_sigma = rng.normal(size=(2, 5, 7))
  got = kl_lib.gaussian_kl(mu, log_sigma, p_mu, p_log_sigma)
  s_q, s_p = np.exp(log_sigma), np.exp(p_log_sigma)
  want = np.sum(np.log(s_p / s_q) + (s_q**2 + (mu - p_mu) ** 2)
                / (2 * s_p**2) - 0.5, -1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(kl_lib.gaussian_kl(mu, log_sigma, mu, log_sigma),
                             0.0, atol=1e-6)
  assert np.all(np.asarray(got) >= 0)


def test_refinement_inputs_layout_and_stop_gradient():
  x, means, logits = _mixture(np.random.default_rng(4), k=3, h=6, w=6)
  a = ii.refinement_inputs(x, means, logits, SIGMA)
  assert a.shape == (2, 3, 6, 6, ii.image_input_channels(3))
  np.testing.assert_array_equal(a[:, 1, ..., :3], x)  # the image
  np.testing.assert_array_equal(a[:, 2, ..., 3:6], means[:, 2])  # the means
  np.testing.assert_allclose(a[..., 6:7].sum(1), 1.0, atol=1e-6)  # masks
  np.testing.assert_allclose(a[..., 8:9].sum(1), 1.0, atol=1e-6)  # posterior
  # Layer-normalised over (H, W, C) per slot: zero mean, unit variance.
  for start, stop in ((9, 12), (12, 13), (13, 14), (14, 15)):
    part = np.asarray(a[..., start:stop])
    np.testing.assert_allclose(part.mean((2, 3, 4)), 0.0, atol=1e-4)
    np.testing.assert_allclose(part.std((2, 3, 4)), 1.0, atol=1e-2)
  g = jax.grad(lambda m, l: jnp.sum(ii.refinement_inputs(x, m, l, SIGMA)),
               argnums=(0, 1))(means, logits)
  for leaf in g:
    np.testing.assert_array_equal(leaf, 0.0)


# ------------------------------------------------------------- the model
def _tiny(**fields):
  c = run_lib.load_experiment("experiments/iodine.py:tiny,smoke")
  with c.unlocked():
    common.set_fields(c, {f"model.{k}": v for k, v in fields.items()})
  return run_lib.build(c)


@pytest.fixture(scope="module")
def tiny():
  run = _tiny()
  state = run.init_state()
  rng = np.random.default_rng(0)
  image = rng.random((2, 32, 32, 3)).astype(np.float32)
  m = run.model
  noise = rng.normal(size=(m.num_refinements + 1, 2, m.num_slots,
                           m.latent_size)).astype(np.float32)
  return run, state.variables(), image, noise


def _apply(run, variables, image, noise, **kw):
  return run.model.apply(variables, {"image": image}, noise=noise, **kw)


def test_steps_weighted_r_over_r(tiny):
  run, variables, image, noise = tiny
  out = _apply(run, variables, image, noise)
  r = run.model.num_refinements
  assert out.aux["nll_steps"].shape == (2, r + 1)
  w = np.arange(r + 1) / r  # 0 for lambda_0, 1 for the output
  np.testing.assert_allclose(out.losses["nll"], out.aux["nll_steps"] @ w,
                             rtol=1e-6)
  np.testing.assert_allclose(out.losses["kl"], out.aux["kl_steps"] @ w,
                             rtol=1e-6)
  # The last step is the output: its NLL is that of the returned mixture.
  log_p, _ = likelihood.pixel_mixture_log_probs(
      image, jnp.log(out.masks), out.components, run.model.sigma)
  np.testing.assert_allclose(-log_p.sum((1, 2)), out.aux["nll_steps"][:, -1],
                             rtol=1e-4)
  np.testing.assert_allclose(out.aux["recon_steps"][:, -1], out.recon,
                             rtol=1e-6)


def test_refinement_moves_the_posterior(tiny):
  run, variables, image, noise = tiny
  out = _apply(run, variables, image, noise)
  lambda_0 = np.asarray(variables["params"]["lambda_0"])
  assert not np.allclose(out.aux["lambda"], lambda_0, atol=1e-3)
  # R = 1: lambda_0 scored (weight 0), refined once, the result is the
  # output (weight 1); the first score is the longer run's first.
  one = _tiny(num_refinements=1)
  out1 = one.model.apply(variables, {"image": image}, noise=noise[:2])
  np.testing.assert_allclose(out1.aux["nll_steps"][:, 0],
                             out.aux["nll_steps"][:, 0], rtol=1e-5)
  np.testing.assert_allclose(out1.aux["nll_steps"][:, 1],
                             out.aux["nll_steps"][:, 1], rtol=1e-5)
  np.testing.assert_allclose(out1.losses["nll"], out1.aux["nll_steps"][:, 1],
                             rtol=1e-6)


def test_slot_order_equivariance(tiny):
  run, variables, image, noise = tiny
  out = _apply(run, variables, image, noise)
  for perm in itertools.islice(itertools.permutations(range(3)), 1, 3):
    p = np.asarray(perm)
    out_p = _apply(run, variables, image, noise[:, :, p])
    np.testing.assert_allclose(out_p.masks, out.masks[:, p], atol=1e-5)
    np.testing.assert_allclose(out_p.recon, out.recon, atol=1e-5)
    np.testing.assert_allclose(out_p.losses["nll"], out.losses["nll"],
                               rtol=1e-5)


def test_scan_unroll_does_not_change_the_numbers(tiny):
  run, variables, image, noise = tiny
  out = _apply(run, variables, image, noise)
  rolled = _tiny(scan_unroll=1)
  out_r = rolled.model.apply(variables, {"image": image}, noise=noise)
  np.testing.assert_allclose(out_r.losses["nll"], out.losses["nll"],
                             rtol=1e-5)
  np.testing.assert_allclose(out_r.masks, out.masks, atol=1e-5)


@pytest.mark.slow
class TestGradients(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_training_gradient(self):
    run = _tiny()
    variables = run.init_state().variables()
    rng = np.random.default_rng(1)
    image = rng.random((2, 32, 32, 3)).astype(np.float32)
    noise = rng.normal(size=(3, 2, 3, 8)).astype(np.float32)  # R + 1 = 3

    @self.variant
    def loss(params):
      out = run.model.apply({"params": params}, {"image": image},
                            noise=noise)
      return jnp.mean(10.0 * out.losses["nll"] + out.losses["kl"])

    grads = jax.grad(loss)(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    # Every network receives a gradient: the decoder through the ELBO, the
    # refinement network and lambda_0 through the refined posteriors.
    for name in ("decoder", "refine", "lambda_0"):
      assert any(np.any(g != 0)
                 for g in jax.tree.leaves(grads[name])), name


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="model.refine_pool"):
    _tiny(refine_pool=3, refine_strides=(1, 1)).init_state()
  with pytest.raises(ValueError, match="model.refine_channels"):
    _tiny(refine_strides=(2,)).init_state()
  run = _tiny()
  with pytest.raises(ValueError, match=r"\[R \+ 1, B, K, L\]"):
    run.model.init(jax.random.key(0), {"image": np.zeros((1, 32, 32, 3))},
                   noise=np.zeros((2, 1, 3, 8)))  # R + 1 = 3


# ------------------------------------------------------------- SEQ-IODINE
def _seq(**fields):
  c = run_lib.load_experiment("experiments/seq_iodine.py:tiny,smoke")
  with c.unlocked():
    common.set_fields(c, {f"model.{k}": v for k, v in fields.items()})
  return run_lib.build(c)


def test_seq_iodine_feeds_one_frame_per_refinement():
  run = _seq()
  variables = run.init_state().variables()
  rng = np.random.default_rng(3)
  video = rng.random((2, 4, 32, 32, 3)).astype(np.float32)
  apply = lambda v: run.model.apply(variables, {"video": v},
                                    rngs={"sample": jax.random.key(0)})
  out = apply(video)
  assert out.masks.shape == (2, 4, 3, 32, 32, 1)
  np.testing.assert_allclose(out.losses["nll"], out.aux["nll_frames"].sum(1),
                             rtol=1e-5)
  # Frame t's decomposition has seen frames 0..t only.
  changed = video.copy()
  changed[:, 2:] = 1.0 - changed[:, 2:]
  out_changed = apply(changed)
  np.testing.assert_allclose(out_changed.masks[:, :2], out.masks[:, :2],
                             atol=1e-5)
  assert not np.allclose(out_changed.masks[:, 2], out.masks[:, 2], atol=1e-5)
  # Its frame-t score is that frame's mixture likelihood.
  log_p, _ = likelihood.pixel_mixture_log_probs(
      video[:, 1], jnp.log(out.masks[:, 1]), out.components[:, 1],
      run.model.sigma)
  np.testing.assert_allclose(-log_p.sum((1, 2)), out.aux["nll_frames"][:, 1],
                             rtol=1e-4)


def test_iodine_clamp_bounds_the_update():
  run = _tiny()
  m = run.model.bind(run.init_state().variables())
  params = m.refine.variables["params"]
  rng = np.random.default_rng(4)
  x = rng.random((1, 32, 32, 3)).astype(np.float32)
  lam = np.zeros((1, 3, 16), np.float32)
  grad = 1e6 * rng.normal(size=lam.shape).astype(np.float32)
  means = rng.random((1, 3, 32, 32, 3)).astype(np.float32)
  logits = rng.normal(size=(1, 3, 32, 32, 1)).astype(np.float32)
  state = m.refine.initial_state(3)
  big = jax.tree.map(lambda p: 1e3 * p, params)
  free, _ = m._refine(big, x, lam, grad, means, logits, state)
  clamped, _ = m._refine(big, x, lam, grad, means, logits, state, clamp=10.0)
  assert np.abs(np.asarray(free)).max() > 10.0
  assert np.abs(np.asarray(clamped)).max() <= 10.0 + 1e-5
