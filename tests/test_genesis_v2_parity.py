"""GENESIS-V2 against the official PyTorch implementation, value by value.

The fixture (../shared/fixtures/genesis_v2_reference, see its README) holds the
official model's parameters, inputs, every random draw, intermediate outputs,
gradients, GECO traces and prior samples. With those weights (through our
converter) and draws injected, our model must reproduce them.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocjax import xla_flags
from ocjax.convert import genesis_v2 as convert
from ocjax.models import genesis_v2
from ocjax.objectives import geco as geco_lib

CFG = types.SimpleNamespace(image_size=64, feat_dim=64, semiconv=True,
                            autoregressive_prior=True)


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def _kb(a):
  """Ours ``[B, K, ...]`` -> the fixture's slot-first ``[K, B, ...]``."""
  return np.moveaxis(np.asarray(a), 1, 0)


def _kb_chw(a):
  """``[B, K, H, W, C]`` -> ``[K, B, C, H, W]``."""
  return _kb(a).transpose(0, 1, 4, 2, 3)


def _assert_close(ours, ref, rtol, name):
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30)
  assert err <= rtol, f"{name}: max error {err:.2e} of max |ref| > {rtol}"


def _state_dict(ref, gate=None):
  sd = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
  if gate is not None:
    sd["att_process.colour_head.gate.gate"] = np.float32(gate)
  return sd


def _run(ref, *, gate=None, dtype=np.float32, with_grad=False):
  """Forward (and gradient of the fixture's loss) with the fixture's draws."""
  params = convert.torch_to_params(_state_dict(ref, gate), CFG, dtype=dtype)
  model = genesis_v2.GenesisV2(dtype=jnp.dtype(dtype))
  x = jnp.asarray(ref["input/x"].transpose(0, 2, 3, 1).astype(dtype))
  noise = dict(
      seed_scores=jnp.asarray(ref["rand/icsbp_uniform"][:, 0].astype(dtype)),
      posterior_eps=jnp.asarray(
          ref["rand/posterior_eps"].transpose(1, 0, 2).astype(dtype)))

  def loss_fn(p):
    out, inter = model.apply({"params": p}, {"image": x}, noise=noise,
                             mutable=["intermediates"])
    # The reference's loss at GECO's initial beta = 1 (fixture README §1).
    loss = jnp.mean(out.losses["nll"]) + 1.0 * jnp.mean(out.losses["kl"])
    return loss, (out, inter["intermediates"])

  options = xla_flags.compiler_options(dtype)
  if with_grad:
    (loss, (out, inter)), grads = jax.jit(
        jax.value_and_grad(loss_fn, has_aux=True),
        compiler_options=options)(params)
    grads = convert.params_to_torch(jax.tree.map(np.asarray, grads), CFG)
  else:
    loss, (out, inter) = jax.jit(loss_fn, compiler_options=options)(params)
    grads = None
  return loss, out, inter, grads


@pytest.fixture(scope="module")
def ref(genesis_v2_reference):
  return genesis_v2_reference


@pytest.fixture(scope="module")
def default_run(ref):
  return _run(ref, with_grad=True)


@pytest.fixture(scope="module")
def gate_run(ref):
  return _run(ref, gate=float(ref["gate/value"]), with_grad=True)


def test_fixture_configuration_is_ours(ref):
  assert int(ref["meta/K"]) == 7 and int(ref["meta/img_size"]) == 64
  assert str(ref["meta/kernel"]) == "gaussian"
  sd = _state_dict(ref)
  params = convert.torch_to_params(sd, CFG)
  init = genesis_v2.GenesisV2().init(
      {"params": jax.random.key(0), "icsbp": jax.random.key(1),
       "sample": jax.random.key(2)}, {"image": jnp.zeros((1, 64, 64, 3))})
  shapes = jax.tree.map(np.shape, init["params"])
  assert jax.tree.map(np.shape, params) == shapes
  n = sum(np.size(v) for v in sd.values())
  assert n == sum(np.size(v) for v in jax.tree.leaves(params)) == 2_729_422
  # Initial kernel scale, Eq. (4): sigma = 1 / (K ln 2).
  np.testing.assert_allclose(np.exp(init["params"]["icsbp"]["log_sigma"]),
                             ref["meta/kernel_sigma_init"], rtol=1e-6)


def test_converter_round_trip(ref):
  sd = _state_dict(ref)
  back = convert.params_to_torch(convert.torch_to_params(sd, CFG), CFG)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_converter_rejects_other_models(ref):
  sd = _state_dict(ref)
  del sd["prior_linear.bias"]
  sd["comp_vae.extra.weight"] = np.zeros(3)
  with pytest.raises(ValueError, match="missing.*prior_linear.bias.*"
                     "unexpected.*comp_vae.extra.weight"):
    convert.torch_to_params(sd, CFG)


def test_converter_reads_npz(ref, tmp_path):
  path = tmp_path / "official.npz"
  np.savez(path, **_state_dict(ref))
  sd = convert.load_state_dict(str(path))
  assert set(sd) == set(_state_dict(ref))
  with pytest.raises(FileNotFoundError, match="no_such.pth"):
    convert.load_state_dict(str(tmp_path / "no_such.pth"))


def test_forward_intermediates(ref, default_run):
  loss, out, inter, _ = default_run
  o = lambda k: ref[f"out/{k}"]
  tol = 2e-5
  _assert_close(_nchw(inter["enc_feat"][0]), o("enc_feat"), tol, "enc_feat")
  _assert_close(_nchw(inter["attention_features"][0]), o("seg_head"), tol,
                "seg_head")
  _assert_close(_nchw(inter["feat"][0]), o("feat_head"), tol, "feat_head")
  _assert_close(_nchw(out.aux["zeta"]), o("colour"), tol, "colour")
  _assert_close(_nchw(out.aux["delta"]), o("delta"), tol, "delta")
  np.testing.assert_array_equal(_kb(out.aux["seed_index"]), o("seed_index"))
  _assert_close(_kb(out.aux["seeds"]), o("seeds"), tol, "seeds")
  log_m = _kb(out.aux["log_m"][..., 0])
  _assert_close(np.exp(log_m), np.exp(o("log_m_k")[:, :, 0]), tol, "m_k")
  _assert_close(log_m, o("log_m_k")[:, :, 0], tol, "log_m_k")
  _assert_close(_kb(out.aux["log_s"][..., 0]), o("log_s_k")[:, :, 0], tol,
                "log_s_k")
  _assert_close(_kb(inter["pooled"][0]), o("obj_feat"), tol, "obj_feat")
  _assert_close(_kb(inter["posterior_stats"][0]), o("z_head_out"), tol,
                "z_head_out")
  for ours, key in [(out.aux["mu"], "mu"), (out.aux["sigma"], "sigma"),
                    (out.latents, "z")]:
    _assert_close(_kb(ours), o(key), tol, key)
  _assert_close(_kb_chw(out.components), o("x_r_k"), tol, "x_r_k")
  _assert_close(_kb_chw(inter["mask_logits"][0]), o("mask_logits"), tol,
                "mask_logits")
  _assert_close(_kb_chw(out.aux["log_pi"]), o("log_m_r_k"), tol, "log_m_r_k")
  _assert_close(_nchw(out.recon), o("recon"), tol, "recon")
  np.testing.assert_array_equal(
      np.argmax(np.asarray(out.aux["log_m"][..., 0]), 1), o("instance_seg"))
  np.testing.assert_array_equal(
      np.argmax(np.asarray(out.aux["log_pi"][..., 0]), 1), o("instance_seg_r"))
  _assert_close(out.losses["nll"], o("err"), 1e-6, "err")
  _assert_close(_kb(inter["prior_h"][0]), o("prior_lstm_out"), tol,
                "prior_lstm_out")
  _assert_close(_kb(out.aux["prior_mu"][:, 1:]), o("prior_mu"), tol,
                "prior_mu")
  _assert_close(_kb(out.aux["prior_sigma"][:, 1:]), o("prior_sigma"), tol,
                "prior_sigma")
  _assert_close(_kb(out.aux["kl_k"]), o("kl"), 1e-5, "kl")
  _assert_close(_kb(out.aux["kl_log_q"]), o("kl_log_q"), tol, "kl_log_q")
  _assert_close(_kb(out.aux["kl_log_p"]), o("kl_log_p"), tol, "kl_log_p")
  _assert_close(jnp.sum(jnp.mean(out.aux["kl_k"], 0)), o("kl_sum"), 1e-5,
                "kl_sum")
  _assert_close(loss, o("loss"), 1e-6, "loss")


def test_forward_with_gate(ref, gate_run):
  """Gate 0.5: the masks depend on the image (README §4.5)."""
  loss, out, _, _ = gate_run
  o = lambda k: ref[f"gate/out/{k}"]
  tol = 2e-5
  np.testing.assert_array_equal(_kb(out.aux["seed_index"]), o("seed_index"))
  for ours, key in [(_nchw(out.aux["zeta"]), "colour"),
                    (_nchw(out.aux["delta"]), "delta"),
                    (_kb(out.aux["seeds"]), "seeds"),
                    (np.exp(_kb(out.aux["log_m"][..., 0])), "log_m_k"),
                    (_kb(out.aux["mu"]), "mu"), (_kb(out.aux["sigma"]), "sigma"),
                    (_kb(out.latents), "z"),
                    (_kb(out.aux["prior_mu"][:, 1:]), "prior_mu"),
                    (_kb(out.aux["prior_sigma"][:, 1:]), "prior_sigma"),
                    (np.exp(_kb_chw(out.aux["log_pi"])), "log_m_r_k"),
                    (_nchw(out.recon), "recon"), (out.losses["nll"], "err"),
                    (_kb(out.aux["kl_k"]), "kl")]:
    want = o(key)
    if key in ("log_m_k", "log_m_r_k"):
      want = np.exp(want)
      if key == "log_m_k":
        want = want[:, :, 0]
    _assert_close(ours, want, 1e-5 if key == "kl" else tol, key)
  _assert_close(loss, o("loss"), 1e-6, "loss")


def _check_grads_float32(ref, grads, prefix, exact_zero=()):
  """float32 against the float32 reference: ~1e-3 of each tensor's max."""
  for name in ref["meta/param_names"]:
    key = f"{prefix}grad/{name}"
    if key not in ref:
      continue
    want = ref[key]
    if name in exact_zero or name == "att_process.colour_head.conv.bias":
      # Exactly zero in exact arithmetic (README §4.5): compare absolutely,
      # scaled by the colour-conv weight gradient.
      scale = np.abs(ref[f"{prefix}grad/att_process.colour_head.conv.weight"]
                     ).max()
      assert np.abs(grads[name]).max() <= 1e-5 * max(scale, 1.0), name
      continue
    _assert_close(grads[name], want, 1e-3, key)


def test_gradients_float32(ref, default_run, gate_run):
  _check_grads_float32(ref, default_run[3], "")
  _check_grads_float32(ref, gate_run[3], "gate/")
  # With gate = 0 the masks ignore the image: these gradients are exactly 0.
  for name in ref["meta/param_names"]:
    if name.startswith(("seg_head.", "att_process.colour_head.conv.")):
      assert np.all(default_run[3][name] == 0), name
  assert len(default_run[3]) == 78


@pytest.mark.parametrize("gate", [None, "gate/"])
def test_gradients_float64(ref, gate):
  """float64 against the reference evaluated in float64 (README §6)."""
  prefix = gate or ""
  with jax.enable_x64(True):
    _, out, _, grads = _run(
        ref, gate=float(ref["gate/value"]) if gate else None,
        dtype=np.float64, with_grad=True)
    assert out.recon.dtype == jnp.float64
  checked = 0
  for name in ref["meta/param_names"]:
    ours = grads[name].astype(np.float64)
    if f"{prefix}grad64/{name}" in ref:
      want = ref[f"{prefix}grad64/{name}"].astype(np.float64)
      scale = np.abs(want).max()
      if name == "att_process.colour_head.conv.bias":
        assert np.abs(ours).max() <= 1e-10, name
      else:
        assert np.abs(ours - want).max() <= 1e-5 * scale, name
      checked += 1
    elif f"{prefix}grad/{name}" in ref:
      # No float64 reference: within the reference's own float32 noise.
      want = ref[f"{prefix}grad/{name}"].astype(np.float64)
      floor = float(ref[f"f64diff/{prefix}grad/{name}"])
      assert (np.abs(ours - want).max()
              <= 2 * floor + 1e-5 * np.abs(want).max()), name
      checked += 1
  assert checked >= (20 if gate else 78)


def run_geco_trace(ref, trace):
  """Replays the fixture's GECO trace; ``{key: [steps]}`` as the fixture's."""
  g = geco_lib.Geco(
      goal=float(ref["geco/goal"]), step_size=float(ref["geco/step_size"]),
      alpha=float(ref["geco/alpha"]), beta_init=float(ref["geco/beta_init"]),
      beta_min=float(ref["geco/beta_min"]),
      beta_max=float(ref["geco/beta_max"]),
      speedup=float(ref["geco/speedup"]))
  objective = geco_lib.GecoObjective(geco=g)
  state = objective.init()
  step = jax.jit(lambda losses, s: objective(
      types.SimpleNamespace(losses=losses), s))
  out = {"loss": [], "beta_used": [], "beta": [], "ema": []}
  for err, kl in zip(ref[f"{trace}/err_in"], ref[f"{trace}/kl_in"]):
    losses_in = dict(nll=jnp.float32([err]), kl=jnp.float32([kl]))
    loss, state, metrics = step(losses_in, state)
    out["loss"].append(loss)
    out["beta_used"].append(metrics["beta"])
    out["beta"].append(state.beta)
    out["ema"].append(state.err_ema)
  return {k: np.float32(v) for k, v in out.items()}


def run_prior_samples(ref):
  """Our prior samples with the fixture's draws, paired with the fixture's.

  Returns ``{fixture key: (ours, reference)}`` in the reference's layouts.
  """
  params = convert.torch_to_params(_state_dict(ref), CFG)
  eps = jnp.asarray(ref["sample/eps"].transpose(1, 0, 2))
  out = jax.jit(lambda p, e: genesis_v2.GenesisV2().apply(
      {"params": p}, e.shape[0], noise=dict(prior_eps=e),
      method=genesis_v2.GenesisV2.sample))(params, eps)
  ours = {"z": _kb(out.latents), "prior_mu": _kb(out.aux["prior_mu"][:, 1:]),
          "prior_sigma": _kb(out.aux["prior_sigma"][:, 1:]),
          "lstm_out": _kb(out.aux["prior_h"]), "x_k": _kb_chw(out.components),
          "log_m_k": _kb_chw(out.aux["log_pi"]), "recon": _nchw(out.image)}
  return {k: (v, ref[f"sample/{k}"]) for k, v in ours.items()}


@pytest.mark.parametrize("trace", ["geco", "geco_cross"])
def test_geco_trace(ref, trace):
  out = run_geco_trace(ref, trace)
  np.testing.assert_array_equal(out["ema"], ref[f"{trace}/ema"])
  for key in ("beta", "beta_used", "loss"):
    np.testing.assert_allclose(out[key], ref[f"{trace}/{key}"], rtol=1e-6)


def test_prior_samples(ref):
  pairs = run_prior_samples(ref)
  assert len(pairs) == 7
  for name, (ours, want) in pairs.items():
    _assert_close(ours, want, 2e-5, name)
