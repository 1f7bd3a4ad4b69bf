"""Likelihood, KL terms and GECO."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocjax.objectives import geco as geco_lib
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood


def test_sgmm_nll_against_direct_computation():
  """Eq. (1) in float64 NumPy: -sum log sum_k pi_k N(x; mu_k, sigma)."""
  rng = np.random.default_rng(0)
  b, k, h, w = 2, 4, 5, 6
  x = rng.uniform(size=(b, h, w, 3))
  mu = rng.uniform(size=(b, k, h, w, 3))
  logits = rng.normal(size=(b, k, h, w, 1)) * 3
  pi = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  sigma = 0.7
  dens = np.exp(-(x[:, None] - mu) ** 2 / (2 * sigma**2)) / (
      sigma * math.sqrt(2 * math.pi))
  want = -np.log((pi * dens).sum(1)).sum((1, 2, 3))
  got = likelihood.sgmm_nll(jnp.float32(x), jnp.float32(np.log(pi)),
                            jnp.float32(mu), sigma)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sgmm_nll_is_stable_for_confident_masks():
  x = jnp.zeros((1, 2, 2, 3))
  mu = jnp.stack([jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))], 1)
  log_pi = jnp.log(jnp.stack([jnp.ones((1, 2, 2, 1)),
                              jnp.zeros((1, 2, 2, 1))], 1))  # log 0 = -inf
  nll = likelihood.sgmm_nll(x, log_pi, mu, 0.7)
  # 12 values at the mean of the confident component: -log N(0; 0, 0.7)
  # each, written out (not with the module's own density).
  want = 12 * (math.log(0.7) + 0.5 * math.log(2 * math.pi))
  np.testing.assert_allclose(nll, [want], rtol=1e-6)


def test_monte_carlo_kl_is_unbiased():
  """E_q[log q - log p] = KL(q || p) for Gaussians (analytic)."""
  mu_q, s_q, mu_p, s_p = 0.3, 0.5, -0.2, 1.3
  z = mu_q + s_q * jax.random.normal(jax.random.key(0), (200_000, 1))
  kl = kl_lib.monte_carlo_kl(z, mu_q, s_q, mu_p, s_p)["kl"]
  analytic = (math.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p)**2)
              / (2 * s_p**2) - 0.5)
  assert float(jnp.mean(kl)) == pytest.approx(analytic, abs=5e-3)


def test_mask_kl():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 4, 4, 1)), jnp.float32)
  log_m = jax.nn.log_softmax(logits, axis=1)
  assert np.allclose(kl_lib.mask_kl(log_m, log_m), 0.0, atol=1e-5)
  other = jax.nn.log_softmax(logits[:, ::-1], axis=1)
  kl = np.asarray(kl_lib.mask_kl(log_m, other))
  assert (kl > 0).all()
  # Direct: sum_pixels sum_k m log(m / pi) (no floor needed here).
  m, p = np.exp(np.asarray(log_m)), np.exp(np.asarray(other))
  np.testing.assert_allclose(kl, (m * np.log(m / p)).sum((1, 2, 3, 4)),
                             rtol=1e-4)
  # Empty slots (m = 0) stay finite thanks to the floor.
  empty = log_m.at[:, 0].set(-1e10)
  assert np.isfinite(np.asarray(kl_lib.mask_kl(empty, other))).all()


def _geco(**kw):
  args = dict(goal=100.0, step_size=1e-2, alpha=0.5, beta_init=1.0,
              beta_min=1e-3, beta_max=10.0, speedup=10.0)
  args.update(kw)
  return geco_lib.Geco(**args)


def test_geco_update_rules():
  g = _geco()
  s = g.update(g.init(), jnp.float32(120.0))
  # First step: E = err; C - E = -20 < 0: slow branch, beta shrinks.
  assert float(s.err_ema) == 120.0
  assert float(s.beta) == pytest.approx(math.exp(1e-2 * -20), rel=1e-6)
  s2 = g.update(s, jnp.float32(60.0))
  # E = 0.5*60 + 0.5*120 = 90 < goal: speed-up branch (eta x 10).
  assert float(s2.err_ema) == pytest.approx(90.0)
  assert float(s2.beta) == pytest.approx(
      float(s.beta) * math.exp(1e-1 * 10), rel=1e-5)


def test_geco_constraint_zero_takes_slow_branch_and_clamps():
  g = _geco(goal=50.0)
  s = g.update(g.init(), jnp.float32(50.0))
  assert float(s.beta) == pytest.approx(1.0)
  low = g.update(g.init(), jnp.float32(5000.0))
  assert float(low.beta) == pytest.approx(1e-3)  # clamped at beta_min
  high = _geco(goal=5000.0).update(g.init(), jnp.float32(0.0))
  assert float(high.beta) == pytest.approx(10.0)  # clamped at beta_max


def test_geco_objective_uses_beta_before_update_and_no_gradient():
  g = _geco()
  obj = geco_lib.GecoObjective(geco=g)
  state = g.init().replace(beta=jnp.float32(0.25))

  def loss(nll, kl):
    out = types.SimpleNamespace(losses=dict(nll=nll, kl=kl))
    return obj(out, state)

  nll, kl = jnp.float32([100.0, 140.0]), jnp.float32([4.0, 8.0])
  value, new_state, metrics = loss(nll, kl)
  assert float(value) == pytest.approx(120.0 + 0.25 * 6.0)
  assert float(metrics["beta"]) == 0.25
  assert float(new_state.err_ema) == pytest.approx(120.0)
  g_nll, g_kl = jax.grad(lambda n, k: loss(n, k)[0], argnums=(0, 1))(nll, kl)
  np.testing.assert_allclose(g_nll, [0.5, 0.5])
  np.testing.assert_allclose(g_kl, [0.125, 0.125])


def test_geco_disabled_keeps_beta():
  obj = geco_lib.GecoObjective(geco=_geco(beta_init=0.5), enabled=False)
  out = types.SimpleNamespace(losses=dict(nll=jnp.float32([1.0]),
                                          kl=jnp.float32([2.0])))
  loss, state, _ = obj(out, obj.init())
  assert float(loss) == pytest.approx(2.0)
  assert float(state.beta) == 0.5


def test_geco_constants_follow_the_reconstruction_shape():
  """Goal per pixel and channel times C H W (T for videos); step size
  scaled by reference_pixels / (H W); both read from shapes at call time."""
  obj = geco_lib.GecoObjective(geco=_geco(goal=0.5, step_size=1e-5),
                               per_element=True, reference_pixels=64 * 64)
  image = types.SimpleNamespace(recon=jax.ShapeDtypeStruct((2, 32, 32, 3),
                                                           jnp.float32))
  g = obj.constants(image)
  assert g.goal == pytest.approx(0.5 * 32 * 32 * 3)
  assert g.step_size == pytest.approx(1e-5 * 4.0)
  video = types.SimpleNamespace(recon=jnp.zeros((2, 5, 16, 16, 3)))
  g = obj.constants(video)
  assert g.goal == pytest.approx(0.5 * 5 * 16 * 16 * 3)
  assert g.step_size == pytest.approx(1e-5 * 16.0)
  # Fixed constants when neither is asked for.
  plain = geco_lib.GecoObjective(geco=_geco())
  assert plain.constants(image) is plain.geco


def test_geco_constrains_every_other_term_with_weights():
  obj = geco_lib.GecoObjective(geco=_geco(), weights={"kl_mask": 0.5})
  out = types.SimpleNamespace(losses=dict(
      nll=jnp.float32([10.0, 20.0]), kl=jnp.float32([1.0, 3.0]),
      kl_mask=jnp.float32([4.0, 8.0])))
  state = obj.init().replace(beta=jnp.float32(2.0))
  loss, _, metrics = obj(out, state)
  # 15 + 2 * (2 + 0.5 * 6)
  assert float(loss) == pytest.approx(25.0)
  assert float(metrics["kl"]) == 2.0 and float(metrics["kl_mask"]) == 6.0
  assert float(metrics["neg_elbo"]) == pytest.approx(15.0 + 2.0 + 3.0)


def test_weighted_sum_and_the_registry():
  from ocjax import objectives  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import weighted_sum  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  obj = weighted_sum.WeightedSum(weights={"b": 3.0})
  out = types.SimpleNamespace(losses=dict(a=jnp.float32([1.0, 3.0]),
                                          b=jnp.float32([2.0, 2.0])))
  loss, state, metrics = obj(out, obj.init())
  assert float(loss) == pytest.approx(2.0 + 6.0)
  assert state == {} and float(metrics["a"]) == 2.0
  grads = jax.grad(lambda a: obj(types.SimpleNamespace(
      losses=dict(a=a, b=jnp.float32([2.0, 2.0]))), {})[0])(
          jnp.float32([1.0, 3.0]))
  np.testing.assert_allclose(grads, [0.5, 0.5])
  config = ml_collections.ConfigDict({"name": "weighted_sum"})
  assert isinstance(objectives.build(config), weighted_sum.WeightedSum)
  with pytest.raises(ValueError, match="Unknown objective 'nope'.*geco"):
    objectives.build(ml_collections.ConfigDict({"name": "nope"}))
