"""The spatio-temporal video model (paper 004): its equations' properties.

No official numbers exist (the authors' code is non-commercial and its
checkpoints are not public), so each piece is checked against the paper: the
refinement grid of Fig. 2a, the 2D-LSTM of Eq. (4), the r / R_t weighting of
Eq. (3), the entropy of Eq. (7), the conditioning on the past only (Eqs.
5-6), and prediction with its gradient inputs zeroed (Sec. 3.2.3).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from ocjax import run as run_lib
from ocjax.models import provide
from ocjax.nn import iterative_inference as ii


def test_refinement_grid_is_triangular():
  np.testing.assert_array_equal(provide.refinements_per_frame(10, 6),
                                [6, 5, 4, 3, 2, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(provide.refinements_per_frame(3, 6),
                                [6, 5, 4])
  np.testing.assert_array_equal(
      provide.refinements_per_frame(4, 3, grid=False), [3, 3, 3, 3])
  s = provide.cell_schedule(5, 3)
  # R_t = 3, 2, 1, 1, 1: 8 light cells, no padding to R per frame.
  np.testing.assert_array_equal(s["frame"], [0, 0, 0, 1, 1, 2, 3, 4])
  np.testing.assert_array_equal(s["step"], [0, 1, 2, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(s["first"], s["step"] == 0)
  np.testing.assert_array_equal(s["last"], [0, 0, 1, 0, 1, 1, 1, 1])
  np.testing.assert_allclose(s["weight"], [0, 1 / 3, 2 / 3, 0, 1 / 2, 0, 0,
                                           0])


def test_lstm2d_cell_is_eq4():
  cell = ii.LSTM2DCell(4)
  rng = np.random.default_rng(0)
  temporal = tuple(rng.normal(size=(2, 3, 4)).astype(np.float32))
  refinement = tuple(rng.normal(size=(2, 3, 4)).astype(np.float32))
  x = rng.normal(size=(3, 5)).astype(np.float32)
  params = cell.init(jax.random.key(0), temporal, refinement, x)["params"]
  c, h = cell.apply({"params": params}, temporal, refinement, x)
  lin = lambda p, v: v @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
  g = (lin(params["input"], x) + lin(params["temporal"], temporal[1])
       + lin(params["refinement"], refinement[1]))
  i, f, o, l, cand = np.split(g, 5, axis=-1)
  sig = lambda a: 1 / (1 + np.exp(-a))
  want_c = (sig(f) * (sig(l) * temporal[0] + (1 - sig(l)) * refinement[0])
            + sig(i) * np.tanh(cand))
  np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, sig(o) * np.tanh(want_c), rtol=1e-5,
                             atol=1e-6)


def test_mask_entropy():
  logits = np.zeros((2, 4, 3, 3, 1), np.float32)  # uniform masks
  np.testing.assert_allclose(provide.mask_entropy(logits), 9 * np.log(4),
                             rtol=1e-6)
  sharp = np.zeros((1, 4, 3, 3, 1), np.float32)
  sharp[:, 0] = 50.0
  np.testing.assert_allclose(provide.mask_entropy(sharp), 0.0, atol=1e-6)


# ------------------------------------------------------------- the model
def _tiny(**fields):
  c = run_lib.load_experiment("experiments/provide.py:tiny,smoke")
  with c.unlocked():
    common.set_fields(c, {f"model.{k}": v for k, v in fields.items()})
  return run_lib.build(c)


@pytest.fixture(scope="module")
def tiny():
  run = _tiny()
  variables = run.init_state().variables()
  rng = np.random.default_rng(0)
  video = rng.random((2, 4, 32, 32, 3)).astype(np.float32)
  return run, variables, video


def _apply(run, variables, video, seed=1, **kw):
  return run.model.apply(variables, {"video": video},
                         rngs={"sample": jax.random.key(seed)}, **kw)


def test_outputs_and_weighting(tiny):
  run, variables, video = tiny
  out = _apply(run, variables, video)
  m = run.model
  assert out.recon.shape == video.shape
  assert out.masks.shape == (2, 4, m.num_slots, 32, 32, 1)
  sched = provide.cell_schedule(4, m.num_refinements)
  assert out.aux["nll_cells"].shape == (2, len(sched["frame"]))
  # Eq. (3): light cells weighted r / R_t, each frame's output weighted 1.
  want = out.aux["nll_cells"] @ sched["weight"] + out.aux["nll_frames"].sum(1)
  np.testing.assert_allclose(out.losses["nll"], want, rtol=1e-5)


def test_the_past_conditions_the_future_not_the_reverse(tiny):
  run, variables, video = tiny
  out = _apply(run, variables, video)
  later = video.copy()
  later[:, 2:] = 1.0 - later[:, 2:]
  out_later = _apply(run, variables, later)
  np.testing.assert_allclose(out_later.recon[:, :2], out.recon[:, :2],
                             atol=1e-5)
  np.testing.assert_allclose(out_later.aux["nll_frames"][:, :2],
                             out.aux["nll_frames"][:, :2], rtol=1e-5)
  earlier = video.copy()
  earlier[:, 0] = 1.0 - earlier[:, 0]
  out_earlier = _apply(run, variables, earlier)
  # Frame 1 sees frame 0 through h_{0,R} (2D-LSTM, prior, generation).
  assert not np.allclose(out_earlier.recon[:, 1], out.recon[:, 1], atol=1e-5)


def test_conditional_prior_depends_on_the_temporal_state():
  prior = provide.ConditionalPrior(latent_size=3, hidden_size=8)
  h = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
  params = prior.init(jax.random.key(0), h)
  mu, log_sigma = prior.apply(params, h)
  assert mu.shape == log_sigma.shape == (2, 3)
  assert not np.allclose(mu[0], mu[1])
  assert not np.allclose(log_sigma[0], log_sigma[1])


@pytest.mark.slow
def test_unconditional_ablation_ignores_the_prior_network(tiny):
  run, variables, video = tiny
  plain = _tiny(conditional=False)
  v = plain.init_state().variables()
  out = _apply(plain, v, video)
  assert np.all(np.isfinite(out.losses["kl"]))
  grads = jax.grad(lambda p: jnp.sum(_apply(
      plain, {"params": p}, video).losses["kl"]))(v["params"])
  for g in jax.tree.leaves(grads["prior"]):
    np.testing.assert_array_equal(g, 0.0)  # N(0, I): the prior is unused


def test_prediction_zeroes_the_gradient_inputs():
  rng = np.random.default_rng(2)
  x = rng.random((2, 8, 8, 3)).astype(np.float32)
  means = rng.random((2, 3, 8, 8, 3)).astype(np.float32)
  logits = rng.normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
  kept = ii.refinement_inputs(x, means, logits, 0.5)
  zeroed = ii.refinement_inputs(x, means, logits, 0.5, gradient_scale=0.0)
  grads = slice(9, 13)  # LN(dL/d means) (3 channels), LN(dL/d mask)
  np.testing.assert_array_equal(zeroed[..., grads], 0.0)
  assert np.all(np.any(kept[..., grads] != 0, axis=(2, 3, 4)))
  others = np.r_[0:9, 13:ii.image_input_channels(3)]
  np.testing.assert_array_equal(zeroed[..., others], kept[..., others])


def test_prediction_sees_only_the_observed_frames(tiny):
  run, variables, video = tiny
  out = _apply(run, variables, video, observed_frames=2)
  changed = video.copy()
  changed[:, 2:] = 0.0
  out_changed = _apply(run, variables, changed, observed_frames=2)
  # The predicted frames do not read the true frames...
  np.testing.assert_allclose(out_changed.recon, out.recon, atol=1e-5)
  # ...and only the observed frames enter the objective.
  np.testing.assert_allclose(out_changed.losses["nll"], out.losses["nll"],
                             rtol=1e-5)
  full = _apply(run, variables, video)
  np.testing.assert_allclose(full.recon[:, :2], out.recon[:, :2], atol=1e-5)
  with pytest.raises(ValueError, match="observed_frames"):
    _apply(run, variables, video, observed_frames=0)


@pytest.mark.slow
class TestGradients(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_every_network_learns(self):
    run = _tiny()
    variables = run.init_state().variables()
    video = np.random.default_rng(1).random((2, 3, 32, 32, 3)).astype(
        np.float32)

    @self.variant
    def loss(params):
      out = run.model.apply({"params": params}, {"video": video},
                            rngs={"sample": jax.random.key(0)})
      return jnp.mean(100.0 * out.losses["nll"] + 10.0 * out.losses["kl"]
                      + 0.1 * out.losses["entropy"])

    grads = jax.grad(loss)(variables["params"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for name in ("generator", "prior", "refine", "lambda_0"):
      assert any(np.any(g != 0) for g in jax.tree.leaves(grads[name])), name
