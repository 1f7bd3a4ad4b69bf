"""MONet-G against the official PyTorch implementation, value by value.

The fixture (../shared/fixtures/monet_g_reference, see its README, cited as
"README §x") holds the official model's parameters, inputs, its one random
draw, intermediate outputs, float32 and float64 gradients and prior samples.
With those weights (through our converter) and draws injected, our model must
reproduce them. Every model setting comes from the fixture's ``meta/*``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from ocjax import xla_flags
from ocjax.convert import monet as convert
from ocjax.models import monet
from ocjax.nn import component_vae
from ocjax.nn import layers
from ocjax.objectives import geco as geco_lib

# Largest errors measured by the checks below, printed by `test_zz_summary`
# (run with -s to see them).
ERRORS: dict[str, float] = {}


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def _kb(a):
  """Ours ``[B, K, ...]`` -> the fixture's slot-first ``[K, B, ...]``."""
  return np.moveaxis(np.asarray(a), 1, 0)


def _kb_chw(a):
  """``[B, K, H, W, C]`` -> ``[K, B, C, H, W]``."""
  return _kb(a).transpose(0, 1, 4, 2, 3)


def _rel_err(ours, ref):
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def _assert_close(ours, ref, rtol, name, group="out32"):
  err = _rel_err(ours, ref)
  key = f"{group}/{name}"
  ERRORS[key] = max(ERRORS.get(key, 0.0), err)
  assert err <= rtol, f"{name}: max error {err:.2e} of max |ref| > {rtol}"


def _config(ref) -> dict:
  """The model's settings, read from the fixture (README §4.1)."""
  return dict(
      num_slots=int(ref["meta/K"]), image_size=int(ref["meta/img_size"]),
      filter_start=int(ref["meta/filter_start"]),
      latent_dim=int(ref["meta/comp_ldim"]),
      encoder_channels=int(ref["meta/comp_enc_channels"]),
      decoder_channels=int(ref["meta/comp_dec_channels"]),
      decoder_layers=int(ref["meta/comp_dec_layers"]),
      mask_prior=str(ref["meta/prior_mode"]),
      pixel_bound=bool(ref["meta/pixel_bound"]),
      pixel_std1=float(ref["meta/pixel_std1"]),
      pixel_std2=float(ref["meta/pixel_std2"]))


def _model(ref, dtype=np.float32) -> monet.MONet:
  return monet.MONet(**_config(ref), dtype=jnp.dtype(dtype))


def _state_dict(ref):
  return {k[len("param/"):]: v for k, v in ref.items()
          if k.startswith("param/")}


def _objective(ref):
  """GECO at its initial beta: ``err + beta (kl_l + kl_m)`` (README §1)."""
  assert bool(ref["meta/geco"])
  return geco_lib.GecoObjective(geco=geco_lib.Geco(
      goal=float(ref["meta/geco_goal"]),
      beta_init=float(ref["meta/geco_beta_init"])))


def _run(ref, *, dtype=np.float32):
  """Forward and gradient of the fixture's loss with the fixture's draw."""
  model = _model(ref, dtype)
  params = convert.torch_to_params(_state_dict(ref), model, dtype=dtype)
  x = jnp.asarray(ref["input/x"].transpose(0, 2, 3, 1).astype(dtype))
  noise = dict(component_eps=jnp.asarray(
      ref["rand/comp_eps"].transpose(1, 0, 2).astype(dtype)))
  objective = _objective(ref)

  def loss_fn(p):
    out, inter = model.apply({"params": p}, {"image": x}, noise=noise,
                             mutable=["intermediates"])
    loss, _, metrics = objective(out, objective.init())
    return loss, (out, inter["intermediates"], metrics)

  (loss, (out, inter, metrics)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True),
      compiler_options=xla_flags.compiler_options(dtype))(params)
  grads = convert.params_to_torch(jax.tree.map(np.asarray, grads), model)
  return dict(model=model, params=params, x=x, loss=loss, out=out,
              inter=inter, metrics=metrics, grads=grads)


@pytest.fixture(scope="module")
def ref():
  return load_fixture("monet_g_reference/objects_room_k7.npz")


@pytest.fixture(scope="module")
def run32(ref):
  return _run(ref)


@pytest.fixture(scope="module")
def run64(ref):
  with jax.enable_x64(True):
    res = _run(ref, dtype=np.float64)
    assert res["out"].recon.dtype == jnp.float64
  return res


# ---------------------------------------------------------------- structure
def test_fixture_configuration_is_ours(ref):
  """Shapes and the parameter count (974,085) of the fixture's model."""
  model = _model(ref)
  sd = _state_dict(ref)
  params = convert.torch_to_params(sd, model)
  size = model.image_size
  init = jax.eval_shape(model.init, {"params": jax.random.key(0),
                                     "sample": jax.random.key(1)},
                        {"image": jnp.zeros((1, size, size, 3))})
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape,
                                                        init["params"])
  n = sum(np.size(v) for k, v in sd.items() if k not in convert.BUFFERS)
  assert n == sum(np.size(v) for v in jax.tree.leaves(params))
  assert n == int(ref["meta/num_params"]) == 974_085
  assert list(ref["meta/buffer_names"]) == list(convert.BUFFERS)
  # Constants (README §3.4): coordinates and per-slot pixel std, bit-exact.
  grid = layers.coordinate_grid(size + 2 * model.decoder_layers,
                                size + 2 * model.decoder_layers)
  np.testing.assert_array_equal(grid.transpose(2, 0, 1)[None],
                                ref["const/broadcast_coords"])
  std = component_vae.pixel_stds(model.num_slots, model.pixel_std1,
                                 model.pixel_std2, jnp.float32)
  np.testing.assert_array_equal(np.asarray(std).ravel(),
                                ref["const/pixel_std"])


def test_converter_round_trip(ref):
  model = _model(ref)
  sd = _state_dict(ref)
  back = convert.params_to_torch(convert.torch_to_params(sd, model), model,
                                 include_buffers=True)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_converter_rejects_other_models(ref):
  model = _model(ref)
  sd = _state_dict(ref)
  del sd["att_process.core.final_conv.bias"]
  sd["prior_lstm.weight_ih_l0"] = np.zeros(3)
  with pytest.raises(ValueError, match="missing.*final_conv.bias.*"
                     "unexpected.*prior_lstm.weight_ih_l0"):
    convert.torch_to_params(sd, model)
  sd = _state_dict(ref)
  sd["std"] = sd["std"] * 2
  with pytest.raises(ValueError, match="std.*pixel_std1"):
    convert.torch_to_params(sd, model)
  # A 32x32 model has other UNet/encoder shapes: the layout check fails.
  with pytest.raises(ValueError):
    convert.torch_to_params(_state_dict(ref),
                            monet.MONet(**{**_config(ref), "image_size": 32}))


def test_converter_reads_npz(ref, tmp_path):
  path = tmp_path / "official.npz"
  np.savez(path, **{f"param/{k}": v for k, v in _state_dict(ref).items()})
  sd = convert.load_state_dict(str(path))
  assert set(sd) == set(_state_dict(ref))
  with pytest.raises(FileNotFoundError, match="no_such.pth"):
    convert.load_state_dict(str(tmp_path / "no_such.pth"))


# ------------------------------------------------------------------ forward
def test_attention_unet_intermediates(ref, run32):
  """Every UNet block of steps 0 and 5 (README §3.1), fed the fixture's
  scopes; outputs captured from the model's own attention module."""
  model, params, x = run32["model"], run32["params"], run32["x"]
  for s in (0, 5):
    log_s = jnp.asarray(ref["out/log_s_k"][s].transpose(0, 2, 3, 1))
    logit, state = model.apply(
        {"params": params}, x, log_s,
        method=lambda m, xx, ss: m.attention(xx, ss),
        capture_intermediates=True, mutable=["intermediates"])
    unet_inter = state["intermediates"]["attention"]["unet"]
    o = lambda k, s=s: ref[f"out/unet/step{s}/{k}"]
    n = len([k for k in ref if k.startswith(f"out/unet/step{s}/down")])
    for i in range(n):
      _assert_close(_nchw(unet_inter[f"down_{i}"]["__call__"][0]),
                    o(f"down{i}"), 3e-5, f"unet/step{s}/down{i}")
      _assert_close(_nchw(unet_inter[f"up_{i}"]["__call__"][0]),
                    o(f"up{i}"), 3e-5, f"unet/step{s}/up{i}")
    # Bottleneck MLP output after its ReLU, flattened channel-major.
    mlp = np.maximum(np.asarray(unet_inter["mlp_2"]["__call__"][0]), 0)
    c = o("down4").shape[1]
    side = o("down4").shape[2]
    mlp = mlp.reshape(-1, side, side, c).transpose(0, 3, 1, 2).reshape(
        mlp.shape[0], -1)
    _assert_close(mlp, o("mlp"), 3e-5, f"unet/step{s}/mlp")
    _assert_close(_nchw(logit), ref["out/att_logits"][s], 3e-5,
                  f"unet/step{s}/logit")


def _check_forward(ref, res, group, tol):
  out, inter = res["out"], res["inter"]
  o = lambda k: ref[f"out/{k}"]
  _assert_close(_kb_chw(out.aux["att_logits"]), o("att_logits"), tol,
                "att_logits", group)
  for key in ("log_m", "log_s"):
    ours = _kb_chw(out.aux[key])
    _assert_close(ours, o(f"{key}_k"), tol, f"{key}_k", group)
    _assert_close(np.exp(ours), np.exp(o(f"{key}_k")), tol,
                  f"exp({key}_k)", group)
  _assert_close(_kb(inter["comp_enc_out"][0]), o("comp_enc_out"), tol,
                "comp_enc_out", group)
  _assert_close(_kb(out.aux["mu"]), o("comp_mu"), tol, "comp_mu", group)
  _assert_close(_kb(out.aux["sigma"]), o("comp_sigma"), tol, "comp_sigma",
                group)
  _assert_close(_kb(out.latents), o("comp_z"), tol, "comp_z", group)
  k, b = o("comp_z").shape[:2]
  dec = np.asarray(inter["comp_dec_out"][0])  # [B K, H, W, 4]
  dec = dec.reshape((b, k) + dec.shape[1:])
  _assert_close(_kb_chw(dec), o("comp_dec_out"), tol, "comp_dec_out", group)
  _assert_close(_kb_chw(out.components), o("x_r_k"), tol, "x_r_k", group)
  _assert_close(_kb_chw(inter["mask_logits"][0]), o("mask_logits"), tol,
                "mask_logits", group)
  _assert_close(_kb_chw(out.aux["log_pi"]), o("log_m_r_k"), tol, "log_m_r_k",
                group)
  _assert_close(np.exp(_kb_chw(out.aux["log_pi"])), np.exp(o("log_m_r_k")),
                tol, "exp(log_m_r_k)", group)
  _assert_close(_nchw(out.recon), o("recon"), tol, "recon", group)
  # Reported segmentation = attention masks (the likelihood's).
  np.testing.assert_array_equal(out.masks, out.segmentations["attention"])
  np.testing.assert_allclose(np.asarray(out.masks).sum(1), 1.0, atol=1e-6)


def _check_losses(ref, res, group):
  out, metrics = res["out"], res["metrics"]
  o = lambda k: ref[f"out/{k}"]
  _assert_close(out.losses["nll"], o("err"), 1e-6, "err", group)
  _assert_close(np.mean(np.asarray(out.losses["nll"], np.float64)),
                o("err_mean"), 1e-6, "err_mean", group)
  _assert_close(out.losses["kl_mask"], o("kl_m"), 1e-6, "kl_m", group)
  _assert_close(out.aux["kl_mask_ppc"], o("kl_m_ppc"), 2e-5, "kl_m_ppc",
                group)
  _assert_close(metrics["kl_mask"], o("kl_m_mean"), 1e-6, "kl_m_mean", group)
  _assert_close(_kb(out.aux["kl_k"]), o("kl_l_k"), 1e-5, "kl_l_k", group)
  _assert_close(_kb(out.aux["kl_log_q"]), o("kl_l_log_q"), 1e-5,
                "kl_l_log_q", group)
  _assert_close(_kb(out.aux["kl_log_p"]), o("kl_l_log_p"), 1e-5,
                "kl_l_log_p", group)
  # kl_l = sum_k mean_b KL_l,k,b (README §1).
  _assert_close(np.sum(np.mean(_kb(out.aux["kl_k"]), axis=1)),
                o("kl_l_sum"), 2e-5, "kl_l_sum", group)
  _assert_close(metrics["kl"], o("kl_l_sum"), 2e-5, "kl_l_sum (objective)",
                group)
  _assert_close(metrics["beta"], o("geco_beta_used"), 0, "geco_beta_used",
                group)
  _assert_close(res["loss"], o("loss"), 1e-6, "loss", group)


def test_forward_intermediates(ref, run32):
  _check_forward(ref, run32, "out32", 2e-5)


def test_losses(ref, run32):
  _check_losses(ref, run32, "out32")


def test_train_and_eval_modes_agree(ref, run32):
  """No batch statistics or dropout: ``train`` changes nothing (README §1)."""
  model, params, x = run32["model"], run32["params"], run32["x"]
  noise = dict(component_eps=jnp.asarray(ref["rand/comp_eps"].transpose(
      1, 0, 2)))
  out = jax.jit(lambda p: model.apply({"params": p}, {"image": x},
                                      noise=noise, train=False))(params)
  np.testing.assert_allclose(out.losses["nll"], run32["out"].losses["nll"],
                             rtol=1e-6)


def test_gradients_float32(ref, run32):
  """``|g - grad| <= 2 f64diff + 1e-4 max|grad|`` for all 60 parameters
  (README §6: the attention UNet's float32 gradients are noisy)."""
  grads = run32["grads"]
  names = list(ref["meta/param_names"])
  assert sorted(grads) == sorted(names)
  for name in names:
    want = ref[f"grad/{name}"].astype(np.float64)
    ours = grads[name].astype(np.float64)
    scale = np.abs(want).max()
    bound = 2 * float(ref[f"f64diff/grad/{name}"]) + 1e-4 * scale
    gap = np.abs(ours - want).max()
    key = f"grad32/{name}"
    ERRORS[key] = gap / scale
    ERRORS[f"grad32_over_bound/{name}"] = gap / bound
    assert gap <= bound, f"{name}: {gap:.3e} > {bound:.3e}"


@pytest.mark.slow
def test_float64_forward_and_gradients(ref, run64):
  """float64 against the float64 rerun (``grad64/*``): <= 1e-6 of each
  tensor's max; outputs against the float32 ``out/*`` within its rounding."""
  grads = run64["grads"]
  for name in ref["meta/grad64_full_names"]:
    want = ref[f"grad64/{name}"].astype(np.float64)
    _assert_close(grads[name], want, 1e-6, name, "grad64")
  assert len(ref["meta/grad64_full_names"]) == 60
  _check_forward(ref, run64, "out64", 2e-5)
  _check_losses(ref, run64, "out64")


def test_prior_samples(ref):
  """``sample(2)`` with the fixture's draws (README §3.9)."""
  model = _model(ref)
  params = convert.torch_to_params(_state_dict(ref), model)
  eps = jnp.asarray(ref["sample/eps"].transpose(1, 0, 2))
  out, inter = jax.jit(lambda p, e: model.apply(
      {"params": p}, e.shape[0], noise=dict(prior_eps=e),
      method=monet.MONet.sample, mutable=["intermediates"]))(params, eps)
  k, b = eps.shape[1], eps.shape[0]
  dec = np.asarray(inter["intermediates"]["comp_dec_out"][0])
  dec = dec.reshape((b, k) + dec.shape[1:])
  pairs = {"z": _kb(out.latents), "comp_dec_out": _kb_chw(dec),
           "x_k": _kb_chw(out.components),
           "mask_logits": _kb_chw(out.aux["mask_logits"]),
           "log_m_k": _kb_chw(out.aux["log_masks"]),
           "recon": _nchw(out.image)}
  for name, ours in pairs.items():
    _assert_close(ours, ref[f"sample/{name}"], 2e-6, name, "sample")
  _assert_close(_kb_chw(out.masks), np.exp(ref["sample/log_m_k"]), 2e-6,
                "exp(log_m_k)", "sample")


def test_zz_summary(ref):
  """Prints the largest error of every group (``pytest -s``) and checks that
  every stored output was compared (when the file ran whole)."""
  for group, prefix in (("out32", "out/"), ("sample", "sample/")):
    if not any(k.startswith(group + "/") for k in ERRORS):
      continue  # that test did not run (-k)
    skip = ("sample/eps",)
    missing = [k for k in ref if k.startswith(prefix) and k not in skip
               and f"{group}/{k[len(prefix):]}" not in ERRORS]
    assert not missing, f"fixture arrays never compared: {missing}"
  groups: dict[str, tuple[float, str]] = {}
  for key, err in ERRORS.items():
    group = key.split("/")[0]
    if err >= groups.get(group, (-1.0, ""))[0]:
      groups[group] = (err, key)
  for group, (err, key) in sorted(groups.items()):
    print(f"MONet parity {group}: max {err:.2e} ({key})")
