"""Slot Attention against the official TensorFlow 2 code, value by value.

The fixture (../shared/fixtures/slot_attention_reference, see its README)
holds the official model's weights (Keras names, ``meta/param_names`` order),
an input image in [-1, 1], the slot-initialisation noise, every intermediate
of the forward pass (some row-subsampled), the loss, the gradients in float32
and float64, and one Adam step. Every setting of our model comes from the
fixture's ``meta/*``.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_fixture

from ocjax import xla_flags
from ocjax.convert import slot_attention as convert
from ocjax.models import slot_attention
from ocjax.nn import slot_attention as sa_nn
from ocjax.train import optimizer as optimizer_lib

FIXTURE = "slot_attention_reference/objects_k7.npz"
# Per-slot intermediates of every iteration, and the per-pixel ones (stored
# row-subsampled, flattened [B, N, K]).
SLOT_KEYS = ("slots_prev", "slots_norm", "q", "q_scaled", "updates",
             "gru_out", "mlp_norm", "mlp_out", "slots_out")
ATTN_KEYS = ("attn_logits", "attn_softmax", "attn_renorm")
NORM_SLOTS_BETA = "slot_attention/layer_normalization_2/beta"


@pytest.fixture(scope="module")
def ref():
  return load_fixture(FIXTURE)


def model_kwargs(ref) -> dict:
  """Every model setting from the fixture's meta."""
  m = lambda k: ref[f"meta/{k}"]
  ints = lambda k: tuple(int(v) for v in m(k))
  res = ints("resolution")
  assert res[0] == res[1], res
  assert int(m("pos_embed_size")) == ints("encoder_channels")[-1]
  assert bool(m("gru_reset_after"))
  return dict(
      num_slots=int(m("num_slots")), image_size=res[0],
      num_iterations=int(m("num_iterations")), slot_size=int(m("slot_size")),
      mlp_hidden_size=int(m("mlp_hidden_size")), epsilon=float(m("epsilon")),
      layernorm_epsilon=float(m("layernorm_epsilon")),
      encoder_channels=ints("encoder_channels"),
      encoder_kernel_sizes=ints("encoder_kernel_sizes"),
      encoder_strides=ints("encoder_strides"),
      feedforward_sizes=ints("feedforward_sizes"),
      decoder_initial_size=ints("decoder_initial_size"),
      decoder_channels=ints("decoder_channels"),
      decoder_kernel_sizes=ints("decoder_kernel_sizes"),
      decoder_strides=ints("decoder_strides"))


def _model(ref, dtype=jnp.float32):
  return slot_attention.SlotAttention(**model_kwargs(ref), dtype=dtype)


def _names(ref):
  return [str(n) for n in ref["meta/param_names"]]


def _weights(ref, prefix="param/"):
  return {n: ref[f"{prefix}{n}"] for n in _names(ref)}


def sample_rows(h: int) -> list[int]:
  """The fixture's kept rows of an ``h``-row map (all if h <= 16)."""
  if h <= 16:
    return list(range(h))
  return [0, 1, 2, h // 2 - 1, h // 2, h - 3, h - 2, h - 1]


def _rows(a):  # [B, H, W, C] -> kept rows
  a = np.asarray(a)
  return a[:, sample_rows(a.shape[1])]


def _rows_flat(a):  # [B, N, C] (N = h w, row-major) -> kept positions
  a = np.asarray(a)
  b, n, c = a.shape
  h = int(round(np.sqrt(n)))
  return _rows(a.reshape(b, h, n // h, c)).reshape(b, -1, c)


def _rows_bk(a):  # [B, K, H, W, C] -> kept rows
  a = np.asarray(a)
  return a[:, :, sample_rows(a.shape[2])]


def _err(ours, want) -> float:
  """Largest absolute error over the largest |reference|."""
  ours = np.asarray(ours, np.float64)
  want = np.asarray(want, np.float64)
  assert ours.shape == want.shape, (ours.shape, want.shape)
  return float(np.abs(ours - want).max() / max(np.abs(want).max(), 1e-300))


def run(ref, dtype=np.float32):
  """Loss, outputs, intermediates and Keras-named gradients with the
  fixture's weights, image and noise (the official loss: the batch mean of
  our per-image MSE)."""
  model = _model(ref, jnp.dtype(dtype))
  params = convert.keras_to_params(_weights(ref), model, names=_names(ref),
                                   dtype=dtype)
  image = (ref["input/image"].astype(dtype) + 1) / 2  # ocjax's [0, 1]
  noise = ref["rand/slot_init_noise"].astype(dtype)

  def loss_fn(p):
    out, inter = model.apply({"params": p}, {"image": image}, noise=noise,
                             mutable=["intermediates"])
    return jnp.mean(out.losses["l2"]), (out, inter["intermediates"])

  (loss, (out, inter)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True),
      compiler_options=xla_flags.compiler_options(dtype))(params)
  grads = convert.params_to_keras(jax.tree.map(np.asarray, grads), model,
                                  names=_names(ref))
  return types.SimpleNamespace(loss=loss, out=out, inter=inter, grads=grads)


def ours_by_fixture_key(r) -> dict[str, np.ndarray]:
  """Our intermediates under the fixture's ``out/*`` keys, full size."""
  i, sa = r.inter, r.inter["slot_attention"]
  dec = i["decoder"]
  ours = {
      "encoder_cnn": i["encoder_cnn"][0],
      "encoder_pos_embedding": i["encoder_pos_embed"]["embedding"][0],
      "encoder_pos": i["encoder_pos"][0],
      "encoder_layernorm": i["encoder_layernorm"][0],
      "encoder_mlp": i["encoder_mlp"][0],
      "sa_inputs_norm": sa["inputs_norm"][0],
      "slots_init": sa["slots_init"][0],
      "slots": r.out.latents,
      "decoder_broadcast": dec["broadcast"][0],
      "decoder_pos_embedding": dec["pos_embed"]["embedding"][0],
      "decoder_pos": dec["pos"][0],
      # Back to the official range (in numpy: float64 stays float64).
      "recons": np.asarray(r.out.components) * 2 - 1,
      "mask_logits": i["mask_logits"][0],
      "masks": r.out.masks,
      "recon_combined": i["recon_combined"][0],
  }
  num_layers = len([k for k in dec if k.startswith("out_")])
  for n in range(num_layers - 1):
    ours[f"decoder_conv{n}"] = dec[f"out_{n}"][0][:1]  # first image only
  ours["decoder_cnn"] = dec[f"out_{num_layers - 1}"][0]
  for t in range(int(np.asarray(sa["iteration"]["q"][0]).shape[0])):
    for key in SLOT_KEYS + ATTN_KEYS:
      ours[f"iter{t}/{key}"] = sa["iteration"][key][0][t]
  return {k: np.asarray(v) for k, v in ours.items()}


def reduce_like_fixture(key: str, ours: np.ndarray, how: str,
                        num_slots: int) -> np.ndarray:
  """Applies the fixture's reduction ``how`` (``meta/sampled_keys``)."""
  for step in filter(None, how.split("+")):
    if step == "batch0":
      # Per-pixel tensors: batch element 0; decoder tensors ([B K, ...],
      # row b K + k): its K images.
      ours = ours[:num_slots] if key.startswith("decoder_") else ours[:1]
    elif step == "first_image":
      ours = ours[:1]
    elif step == "rows_nhwc":
      ours = _rows(ours)
    elif step == "rows_flat":
      ours = _rows_flat(ours)
    elif step == "rows_bkhwc":
      ours = _rows_bk(ours)
    else:
      raise AssertionError(f"unknown reduction {how!r} of {key}")
  return ours


def _reductions(ref) -> dict[str, str]:
  out = {}
  for entry in ref["meta/sampled_keys"]:
    key, how = str(entry).rsplit(":", 1)
    out[key] = how
  return out


@pytest.fixture(scope="module")
def run32(ref):
  return run(ref)


@pytest.fixture(scope="module")
def run64(ref):
  with jax.enable_x64(True):
    r = run(ref, np.float64)
    assert r.out.recon.dtype == jnp.float64
    return r


# ------------------------------------------------------------- structure
def test_fixture_configuration_is_ours(ref):
  model = _model(ref)
  params = convert.keras_to_params(_weights(ref), model, names=_names(ref))
  size = model.image_size
  shapes = jax.eval_shape(
      model.init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
      {"image": jnp.zeros((1, size, size, 3))})["params"]
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape,
                                                        shapes)
  assert len(_names(ref)) == len(jax.tree.leaves(params)) == 48
  shapes_keras = [str(list(ref[f"param/{n}"].shape)).replace(" ", "")
                  for n in _names(ref)]
  assert shapes_keras == [str(s).replace(" ", "")
                          for s in ref["meta/param_shapes"]]
  # The fresh-session Keras names of our table are the fixture's.
  assert [r.keras_name for r in convert.parameter_table(model)] == _names(ref)


def test_converter_round_trip(ref):
  model = _model(ref)
  w = _weights(ref)
  back = convert.params_to_keras(
      convert.keras_to_params(w, model, names=_names(ref)), model,
      names=_names(ref))
  assert list(back) == _names(ref)
  for k, v in w.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_converter_errors_name_the_weights(ref):
  model = _model(ref)
  w = _weights(ref)
  del w["dense_5/bias"]
  w["conv2d_9/kernel"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"missing \['dense_5/bias'\].*"
                     r"unexpected \['conv2d_9/kernel'\]"):
    convert.keras_to_params(w, model, names=_names(ref))
  w = _weights(ref)
  w["slots_mu"] = np.zeros((1, 1, 32), np.float32)
  with pytest.raises(ValueError, match=r"'slots_mu'.*\(1, 1, 32\).*"
                     r"\(1, 1, 64\)"):
    convert.keras_to_params(w, model, names=_names(ref))
  with pytest.raises(ValueError, match=r"lists 47 weights.*has 48.*"
                     r"missing the roles \['slot MLP 1 bias'\]"):
    convert.keras_to_params(_weights(ref), model, names=_names(ref)[:-1])


def test_converter_reads_and_writes_npz(ref, tmp_path):
  model = _model(ref)
  path = tmp_path / "official.npz"
  np.savez(path, **{f"param/{k}": v for k, v in _weights(ref).items()},
           **{"meta/param_names": ref["meta/param_names"]})
  weights, names = convert.load_weights(str(path))
  assert names == _names(ref) and set(weights) == set(names)
  params = convert.keras_to_params(weights, model, names=names)
  out = tmp_path / "ours.npz"
  convert.save_weights(str(out), params, model)
  weights2, names2 = convert.load_weights(str(out))
  assert names2 == names
  for k in names:
    np.testing.assert_array_equal(weights2[k], ref[f"param/{k}"], err_msg=k)
  with pytest.raises(FileNotFoundError, match="no_such.npz"):
    convert.load_weights(str(tmp_path / "no_such.npz"))


def test_position_grids_are_bit_exact(ref):
  size = int(ref["meta/resolution"][0])
  h0, w0 = (int(v) for v in ref["meta/decoder_initial_size"])
  np.testing.assert_array_equal(sa_nn.build_grid(size, size),
                                ref["out/encoder_pos_grid"])
  np.testing.assert_array_equal(sa_nn.build_grid(h0, w0),
                                ref["out/decoder_pos_grid"])


def test_lax_conv_transpose_is_tf_conv2d_transpose(ref):
  """The first decoder layer from the stored decoder input with
  ``lax.conv_transpose(..., 'SAME', transpose_kernel=True)`` and Keras's
  kernel as is: with transpose_kernel the dimension numbers describe the
  forward conv, 'HWIO' (the fixture README's 'HWOI' fails: after the swap
  axis 2 is the transposed conv's input)."""
  names = _names(ref)
  first = names.index("conv2d_transpose/kernel")
  assert int(ref["meta/decoder_strides"][0]) == 2
  x = ref["out/decoder_pos"][:1]
  y = jax.lax.conv_transpose(
      x, ref[f"param/{names[first]}"], (2, 2), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  y = jax.nn.relu(y + ref[f"param/{names[first + 1]}"])
  assert _err(y, ref["out/decoder_conv0"]) <= 1e-5


# ------------------------------------------------------------- float32
def test_forward_float32(ref, run32):
  ours = ours_by_fixture_key(run32)
  how = _reductions(ref)
  keys = [k[len("out/"):] for k in ref if k.startswith("out/")
          and k not in ("out/encoder_pos_grid", "out/decoder_pos_grid")]
  assert len(keys) == 8 + 12 * int(ref["meta/num_iterations"]) + 13
  errors = {}
  for key in keys:
    mine = reduce_like_fixture(key, ours[key], how.get(f"out/{key}", ""),
                               int(ref["meta/num_slots"]))
    errors[key] = _err(mine, ref[f"out/{key}"])
  # Measured: <= 4e-6 of each tensor's largest value (updates, iteration 3).
  bad = {k: e for k, e in errors.items() if e > 2e-5}
  assert not bad, bad
  # The loss: the official scalar is the batch mean of our per-image MSE.
  assert _err(run32.loss, ref["loss"]) <= 1e-6
  assert float(ref["loss"]) == float(ref["loss_train_step"])


def test_outputs_follow_the_protocol(ref, run32):
  out = run32.out
  b, k = ref["input/image"].shape[0], int(ref["meta/num_slots"])
  size = int(ref["meta/resolution"][0])
  np.testing.assert_allclose(out.recon * 2 - 1, ref["out/recon_combined"],
                             atol=1e-6)
  assert out.losses["l2"].shape == (b,)
  att = np.asarray(out.segmentations["attention"])
  assert att.shape == (b, k, size, size, 1)
  np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)
  # The attention segmentation is the last iteration's softmax over slots.
  last = int(ref["meta/num_iterations"]) - 1
  np.testing.assert_allclose(
      _rows_flat(np.moveaxis(att[..., 0], 1, -1).reshape(b, -1, k)),
      ref[f"out/iter{last}/attn_softmax"], atol=2e-6)
  np.testing.assert_array_equal(out.segmentations["decoder"], out.masks)


def _grad_errors(grads, ref, prefix):
  errors = {}
  for name in _names(ref):
    if name.endswith(NORM_SLOTS_BETA):
      continue
    errors[name] = _err(grads[name], ref[f"{prefix}grad/{name}"])
  return errors


def test_gradients_float32(ref, run32):
  """Our float32 gradients against TF's float32 ones and the float64 truth.

  TF's own float32 gradients differ from its float64 ones by up to 7e-4 of
  each weight's largest |gradient| (slots_log_sigma; measured from the
  fixture); ours are within 5e-4 of both.
  """
  for prefix in ("", "f64/"):
    errors = _grad_errors(run32.grads, ref, prefix)
    assert len(errors) == 47
    bad = {k: e for k, e in errors.items() if e > 1e-3}
    assert not bad, (prefix, bad)
  # norm_slots beta: analytically zero (a shift of every slot's logit).
  name = next(n for n in _names(ref) if n.endswith(NORM_SLOTS_BETA))
  assert np.abs(run32.grads[name]).max() <= 1e-10
  assert np.abs(ref[f"grad/{name}"]).max() <= 1e-10


# ------------------------------------------------------------- float64
# The float64 forward and backward pass (the run64 fixture) takes 17-32 s on
# 2 shared CPU cores: about the `slow` threshold, so left in the fast set.
def test_forward_float64(ref, run64):
  ours = ours_by_fixture_key(run64)
  how = _reductions(ref)
  keys = [k[len("f64/out/"):] for k in ref if k.startswith("f64/out/")]
  assert len(keys) >= 40
  errors = {}
  for key in keys:
    mine = reduce_like_fixture(key, ours[key], how.get(f"f64/out/{key}", ""),
                               int(ref["meta/num_slots"]))
    errors[key] = _err(mine, ref[f"f64/out/{key}"])
  bad = {k: e for k, e in errors.items() if e > 1e-10}  # measured <= 1e-14
  assert not bad, bad
  assert _err(run64.loss, ref["f64/loss"]) <= 1e-12


def test_gradients_float64(ref, run64):
  errors = _grad_errors(run64.grads, ref, "f64/")
  assert len(errors) == 47
  bad = {k: e for k, e in errors.items() if e > 1e-9}  # measured <= 3e-14
  assert not bad, bad
  name = next(n for n in _names(ref) if n.endswith(NORM_SLOTS_BETA))
  assert np.abs(run64.grads[name]).max() <= 1e-18  # reference: ~6e-22


# ------------------------------------------------------------- optimizer
def _optimizer_config(ref, schedule: str):
  m = lambda k: ref[f"meta/{k}"]
  return ml_collections.ConfigDict(dict(
      name="adam_keras", learning_rate=float(m("lr_base")),
      b1=float(m("adam_beta1")), b2=float(m("adam_beta2")),
      eps=float(m("adam_epsilon")), grad_clip_norm=0.0, schedule=schedule,
      warmup_steps=int(m("lr_warmup_steps")),
      decay_rate=float(m("lr_decay_rate")),
      decay_steps=int(m("lr_decay_steps"))))


def _one_step(ref, schedule):
  model = _model(ref)
  params = convert.keras_to_params(_weights(ref), model, names=_names(ref))
  grads = convert.keras_to_params(_weights(ref, "grad/"), model,
                                  names=_names(ref))
  tx = optimizer_lib.make_optimizer(_optimizer_config(ref, schedule))
  updates, _ = tx.update(grads, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  return convert.params_to_keras(jax.tree.map(np.asarray, new), model,
                                 names=_names(ref))


def test_adam_keras_step_at_the_base_rate(ref):
  """One Keras-Adam step at lr 4e-4 from param/* with the fixture's grad/*."""
  new = _one_step(ref, "constant")
  checked, worst = 0, 0.0
  for name in _names(ref):
    key = f"param_after_step_lr_base/{name}"
    if key not in ref:
      continue
    err = np.abs(new[name].astype(np.float64) - ref[key]).max()
    worst = max(worst, float(err))
    checked += 1
  assert checked == 40
  # Steps are ~lr = 4e-4; measured: <= 1.5e-8 (float32 rounding).
  assert worst <= 5e-8, worst


def test_official_schedule_step_zero_changes_nothing(ref):
  lr = optimizer_lib.learning_rate_schedule(
      _optimizer_config(ref, "warmup_decay"))
  assert float(lr(int(ref["meta/lr_global_step"]))) == float(
      ref["meta/lr_step0"]) == 0.0
  new = _one_step(ref, "warmup_decay")
  for name in _names(ref):
    np.testing.assert_array_equal(new[name], ref[f"param_after_step/{name}"],
                                  err_msg=name)


def test_official_schedule_values(ref):
  """train.py: base * min(1, step / warmup) * rate ** (step / decay)."""
  m = lambda k: float(ref[f"meta/{k}"])
  lr = optimizer_lib.learning_rate_schedule(
      _optimizer_config(ref, "warmup_decay"))
  for step in (0, 1, 5_000, 9_999, 10_000, 10_001, 100_000, 250_000,
               499_999):
    warm = (step / m("lr_warmup_steps") if step < m("lr_warmup_steps")
            else 1.0)
    want = m("lr_base") * warm * m("lr_decay_rate") ** (
        step / m("lr_decay_steps"))
    assert float(lr(step)) == pytest.approx(want, rel=2e-6), step
