"""Slot Attention on tiny configurations (parity is in *_parity.py)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import slot_attention as experiment
from ocjax import models
from ocjax.convert import slot_attention as convert
from ocjax.models import slot_attention
from ocjax.nn import conv_transpose
from ocjax.nn import slot_attention as sa_nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(num_slots=3, image_size=32, slot_size=16, mlp_hidden_size=32,
            encoder_channels=(16, 16, 16, 16), feedforward_sizes=(16, 16),
            decoder_initial_size=8, decoder_channels=(16, 16, 16, 4),
            decoder_kernel_sizes=(5, 5, 5, 3), decoder_strides=(2, 2, 1, 1))


def _model(**kw):
  return slot_attention.SlotAttention(**{**TINY, **kw})


def _rngs(seed=0):
  k = jax.random.key(seed)
  return {n: jax.random.fold_in(k, i) for i, n in enumerate(("params",
                                                             "sample"))}


def _batch(b=2, size=32, seed=0):
  return {"image": jax.random.uniform(jax.random.key(seed),
                                      (b, size, size, 3))}


@functools.lru_cache(maxsize=None)
def _tiny():
  """The tiny model and its parameters (initialised once per session)."""
  model = _model()
  params = jax.jit(model.init)(_rngs(), _batch())["params"]
  return model, params


@pytest.fixture(scope="module")
def tiny():
  return _tiny()


def test_model_is_registered():
  assert "slot_attention" in models.names()
  assert models.model_class("slot_attention") is slot_attention.SlotAttention


def test_outputs_shapes_and_normalisation(tiny):
  model, params = tiny
  batch = _batch(b=2)
  out, inter = jax.jit(lambda p, b: model.apply(
      {"params": p}, b, rngs=_rngs(1), mutable=["intermediates"]))(params,
                                                                   batch)
  b, k, s, d = 2, TINY["num_slots"], TINY["image_size"], TINY["slot_size"]
  chex.assert_shape(out.recon, (b, s, s, 3))
  chex.assert_shape(out.masks, (b, k, s, s, 1))
  chex.assert_shape(out.components, (b, k, s, s, 3))
  chex.assert_shape(out.latents, (b, k, d))
  assert set(out.losses) == {"l2"}
  chex.assert_shape(out.losses["l2"], (b,))
  assert tuple(out.segmentations) == model.segmentation_names
  for masks in out.segmentations.values():
    chex.assert_shape(masks, (b, k, s, s, 1))
    np.testing.assert_allclose(np.asarray(masks).sum(1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(out.masks, out.segmentations["decoder"])
  # Attention: softmax over slots, then (+eps) renormalised over inputs.
  it = inter["intermediates"]["slot_attention"]["iteration"]
  softmax = np.asarray(it["attn_softmax"][0])  # [T, B, N, K]
  renorm = np.asarray(it["attn_renorm"][0])
  assert softmax.shape == (3, b, s * s, k)
  np.testing.assert_allclose(softmax.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(renorm.sum(-2), 1.0, atol=1e-5)
  np.testing.assert_allclose(
      np.moveaxis(np.asarray(out.segmentations["attention"])[..., 0], 1,
                  -1).reshape(b, s * s, k), softmax[-1], atol=1e-6)
  # recon = sum_k masks * components (the [-1, 1] <-> [0, 1] map is affine).
  np.testing.assert_allclose(
      np.sum(np.asarray(out.masks) * np.asarray(out.components), 1),
      out.recon, atol=1e-5)
  # The loss is the MSE in the official [-1, 1] space: 4x that in [0, 1].
  mse01 = np.mean((np.asarray(out.recon) - np.asarray(batch["image"])) ** 2,
                  axis=(1, 2, 3))
  np.testing.assert_allclose(out.losses["l2"], 4 * mse01, rtol=1e-4)


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jitted_and_eager_agree(self):
    model, params = _tiny()
    batch = _batch()
    noise = jax.random.normal(jax.random.key(3), (2, 3, TINY["slot_size"]))
    fn = self.variant(lambda p, b, n: model.apply({"params": p}, b, noise=n))
    out = fn(params, batch, noise)
    # The reference is computed eagerly (never jit against jit).
    with jax.disable_jit():
      ref = model.apply({"params": params}, batch, noise=noise)
    chex.assert_trees_all_close(out.losses, ref.losses, rtol=1e-5)
    chex.assert_trees_all_close(out.latents, ref.latents, atol=1e-5)
    chex.assert_trees_all_close(out.masks, ref.masks, atol=1e-6)
    chex.assert_trees_all_close(out.recon, ref.recon, atol=1e-6)


def test_noise_comes_from_the_sample_stream(tiny):
  model, params = tiny
  batch = _batch()
  a = model.apply({"params": params}, batch, rngs=_rngs(5))
  b = model.apply({"params": params}, batch, rngs=_rngs(5))
  c = model.apply({"params": params}, batch, rngs=_rngs(6))
  np.testing.assert_array_equal(a.latents, b.latents)
  assert not np.allclose(a.latents, c.latents)
  # Injected noise replaces the draw: slots_init = mu + exp(log_sigma) eps.
  noise = jax.random.normal(jax.random.key(9), (2, 3, TINY["slot_size"]))
  d = model.apply({"params": params}, batch, noise=noise)
  e = model.apply({"params": params}, batch,
                  noise={"slot_init_noise": noise})
  np.testing.assert_array_equal(e.latents, d.latents)
  sa = params["slot_attention"]
  np.testing.assert_allclose(
      d.aux["slots_init"],
      sa["slots_mu"] + np.exp(sa["slots_log_sigma"]) * noise, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [5, 3, 4])
def test_subpixel_transposed_conv_is_tf_same(kernel_size):
  """`ConvTranspose2x` with (padding, output_padding) of
  `transposed_same_padding` = ``lax.conv_transpose(padding='SAME',
  transpose_kernel=True)`` on Keras's ``[k, k, out, in]`` kernel (TF's
  ``Conv2DTranspose(strides=2, padding='SAME')``). With transpose_kernel the
  dimension numbers describe the forward convolution: 'HWIO' (after the
  swap, axis 2 is the transposed conv's input)."""
  k, c_in, c_out = kernel_size, 6, 5
  kx, kk, kb = jax.random.split(jax.random.key(kernel_size), 3)
  x = jax.random.normal(kx, (3, 8, 8, c_in))
  keras_kernel = jax.random.normal(kk, (k, k, c_out, c_in))
  bias = jax.random.normal(kb, (c_out,))
  want = jax.lax.conv_transpose(
      x, keras_kernel, (2, 2), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      transpose_kernel=True) + bias
  p, op = sa_nn.transposed_same_padding(k)
  ours = jnp.transpose(keras_kernel, (0, 1, 3, 2))  # the converter's layout
  for subpixel in (True, False):
    layer = conv_transpose.ConvTranspose2x(
        c_out, kernel_size=k, padding=p, output_padding=op,
        subpixel=subpixel)
    got = layer.apply({"params": {"kernel": ours, "bias": bias}}, x)
    chex.assert_shape(got, (3, 16, 16, c_out))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  if k == 5:
    assert (p, op) == (1, -1)


def test_stride_one_transposed_conv_is_a_flipped_conv():
  """A stride-1 'SAME' Conv2DTranspose = a 'SAME' conv with the kernel the
  converter gives (spatially flipped, in/out swapped)."""
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 9, 9, 4))
  for k in (5, 3):
    keras_kernel = jax.random.normal(kk, (k, k, 3, 4))  # [k, k, out, in]
    want = jax.lax.conv_transpose(
        x, keras_kernel, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    kernel = convert._flip_swap_io(np.asarray(keras_kernel))
    got = nn.Conv(3, (k, k), padding="SAME").apply(
        {"params": {"kernel": kernel, "bias": np.zeros(3, np.float32)}}, x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_subpixel_and_dilated_decoders_agree(tiny):
  _, params = tiny
  batch = _batch()
  outs = [jax.jit(lambda p, b, m=_model(subpixel_deconv=s): m.apply(
      {"params": p}, b, rngs=_rngs(3)))(params, batch) for s in (True, False)]
  np.testing.assert_allclose(outs[0].recon, outs[1].recon, atol=2e-5)
  np.testing.assert_allclose(outs[0].losses["l2"], outs[1].losses["l2"],
                             rtol=1e-5)


def test_gru_cell_is_keras_reset_after():
  d_in, f = 5, 4
  kx, kh, kp = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (3, d_in))
  h = jax.random.normal(kh, (3, f))
  cell = sa_nn.KerasGRUCell(f)
  params = cell.init(kp, x, h)["params"]
  params = dict(params, bias=jax.random.normal(kp, (2, 3 * f)))
  got = cell.apply({"params": params}, x, h)
  w, u, b = (np.asarray(params[n], np.float64)
             for n in ("kernel", "recurrent_kernel", "bias"))
  x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
  sig = lambda a: 1 / (1 + np.exp(-a))
  gx, gh = x @ w + b[0], h @ u + b[1]
  z = sig(gx[:, :f] + gh[:, :f])
  r = sig(gx[:, f:2 * f] + gh[:, f:2 * f])
  cand = np.tanh(gx[:, 2 * f:] + r * gh[:, 2 * f:])
  np.testing.assert_allclose(got, z * h + (1 - z) * cand, atol=1e-6)


def test_initialisation_is_keras(tiny):
  _, params = tiny
  sa = params["slot_attention"]
  d = TINY["slot_size"]
  bound = np.sqrt(6 / (1 + d))  # glorot_uniform of [1, 1, D]
  for name in ("slots_mu", "slots_log_sigma"):
    v = np.asarray(sa[name])
    assert v.shape == (1, 1, d) and np.abs(v).max() <= bound
    assert np.abs(v).max() > 0.5 * bound  # not zeros / ones
  k0 = np.asarray(params["encoder_conv_1"]["kernel"])  # [5, 5, 16, 16]
  assert np.abs(k0).max() <= np.sqrt(6 / (25 * 16 + 25 * 16))
  for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(leaf_path)
    if name.endswith("['bias']"):
      assert not np.any(np.asarray(leaf)), name  # zero biases
    if name.endswith("['scale']"):
      np.testing.assert_array_equal(leaf, 1.0)  # LayerNorm gamma
  u = np.asarray(sa["iteration"]["gru"]["recurrent_kernel"])  # [D, 3D]
  np.testing.assert_allclose(u @ u.T, np.eye(d), atol=1e-5)  # orthogonal


def test_param_count_of_the_official_model():
  """890,308 weights (the official CLEVR model, K = 7, 128x128)."""
  model = slot_attention.SlotAttention()
  shapes = jax.eval_shape(model.init, _rngs(), _batch(b=1, size=128))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  assert n == 890_308
  table = convert.parameter_table(model)
  assert len(table) == 48 == len(jax.tree.leaves(shapes["params"]))


def test_converter_table_fits_other_configurations(tiny):
  model, params = tiny
  keras = convert.params_to_keras(params, model)
  back = convert.keras_to_params(keras, model)
  chex.assert_trees_all_equal(back, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize("kw, match", [
    (dict(decoder_initial_size=4), r"decoder outputs 16x16 .*image_size is 32"),
    (dict(decoder_channels=(16, 16, 16, 3)),
     r"decoder_channels\[-1\] must be 4"),
    (dict(decoder_strides=(2, 2, 1)), r"equal length"),
    (dict(decoder_strides=(2, 2, 3, 1)), r"must be 1 or 2"),
    (dict(encoder_strides=(1, 1, 1, 3)), r"encoder_strides .* do not divide"),
])
def test_bad_configurations_are_clear_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    _model(**kw).init(_rngs(), _batch())


def test_wrong_image_size_is_a_clear_error(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"32x32 images .*got 64x64"):
    model.apply({"params": params}, _batch(size=64), rngs=_rngs())


def test_strided_encoder_resizes_the_attention():
  model = _model(encoder_strides=(1, 2, 1, 1))
  batch = _batch()
  out, _ = model.init_with_output(_rngs(), batch)
  att = np.asarray(out.segmentations["attention"])
  assert att.shape == (2, 3, 32, 32, 1)
  np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)


def test_float64_compute(tiny):
  _, params32 = tiny
  with jax.enable_x64(True):
    model = _model(dtype=jnp.float64)
    batch = {"image": _batch()["image"].astype(jnp.float64)}
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params32)
    out = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=_rngs(1)))(
        params, batch)
    assert out.recon.dtype == jnp.float64
    assert out.losses["l2"].dtype == jnp.float64


def _scenes(b, size=32, seed=1):
  """Flat backgrounds with two flat-coloured squares each."""
  rng = np.random.RandomState(seed)
  x = np.ones((b, size, size, 3), np.float32) * rng.uniform(
      0, 1, (b, 1, 1, 3)).astype(np.float32)
  for i in range(b):
    for _ in range(2):
      r, c = rng.randint(0, size - 10, 2)
      x[i, r:r + 10, c:c + 10] = rng.uniform(0, 1, 3)
  return {"image": jnp.asarray(x)}


def test_training_lowers_the_loss_on_a_fixed_batch(tiny):
  model, params = tiny
  batch = _scenes(4)
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      out = model.apply({"params": p}, batch, rngs=_rngs(7))
      return jnp.mean(out.losses["l2"])
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  losses = []
  for _ in range(20):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------- experiment
@pytest.mark.parametrize("arg", [None, "quick", "objects_room",
                                 "multi_dsprites", "tetrominoes", "clevr6",
                                 "quick,tiny,smoke"])
def test_presets_build(arg):
  c = experiment.get_config(arg)
  model = models.build(c.model)
  size = int(c.data.image_size)
  assert model.image_size == size
  shapes = jax.eval_shape(model.init, _rngs(), _batch(b=1, size=size))
  out = jax.eval_shape(
      lambda p: model.apply(p, _batch(b=1, size=size), rngs=_rngs()), shapes)
  assert out.recon.shape == (1, size, size, 3)
  assert c.objective.name == "weighted_sum"
  assert c.optimizer.name == "adam_keras"


def test_preset_values():
  paper = experiment.get_config()
  assert (paper.train.batch_size, paper.train.num_steps) == (64, 500_000)
  assert (paper.optimizer.learning_rate, paper.optimizer.eps) == (4e-4, 1e-8)
  assert (paper.optimizer.schedule, paper.optimizer.warmup_steps,
          paper.optimizer.decay_rate, paper.optimizer.decay_steps) == (
              "warmup_decay", 10_000, 0.5, 100_000)
  assert (paper.model.num_slots, paper.model.image_size,
          paper.model.num_iterations) == (7, 128, 3)
  quick = experiment.get_config("quick")
  assert (quick.data.image_size, quick.model.num_slots,
          quick.train.batch_size, quick.train.num_steps,
          quick.train.eval_every, quick.train.log_every,
          quick.train.image_every, quick.train.checkpoint_every,
          quick.train.keep_every, quick.optimizer.learning_rate) == (
              32, 6, 8, 3000, 1000, 100, 500, 250, 1000, 4e-4)
  k = {p: experiment.get_config(p).model.num_slots
       for p in ("objects_room", "multi_dsprites", "tetrominoes", "clevr6")}
  assert k == {"objects_room": 7, "multi_dsprites": 6, "tetrominoes": 4,
               "clevr6": 7}
  sizes = {p: experiment.get_config(p).data.image_size
           for p in ("objects_room", "multi_dsprites", "tetrominoes",
                     "clevr6")}
  assert sizes == {"objects_room": 64, "multi_dsprites": 64,
                   "tetrominoes": 32, "clevr6": 128}
  assert experiment.get_config("clevr6").data.name == "clevr_with_masks"
  # The sprites decoder broadcasts to the full resolution.
  md = experiment.get_config("multi_dsprites")
  assert md.model.decoder_initial_size == 64
  assert set(md.model.decoder_strides) == {1}
  # The demo: the paper's model and objective with Tetrominoes' K = 4 on
  # the procedural Tetrominoes-like scenes; the departures its docstring
  # lists (32x32, small architecture, batch 8, its schedule, 2 CPU devices).
  demo = experiment.get_config("demo")
  assert (demo.data.name, demo.data.image_size, demo.data.num_objects,
          demo.model.image_size, demo.model.num_slots) == (
              "tetrominoes_like", 32, 3, 32, 4)
  for field in ("num_iterations", "slot_size", "mlp_hidden_size", "epsilon",
                "layernorm_epsilon"):
    assert demo.model[field] == paper.model[field], field
  assert demo.objective.to_dict() == paper.objective.to_dict()
  assert (demo.optimizer.name, demo.optimizer.eps) == ("adam_keras", 1e-8)
  assert demo.model.decoder_channels == quick.model.decoder_channels
  assert (demo.train.batch_size, demo.train.num_steps,
          demo.optimizer.learning_rate, demo.optimizer.warmup_steps,
          demo.optimizer.decay_steps, demo.mesh.cpu_devices) == (
              8, experiment.DEMO_STEPS, experiment.DEMO_LR, 300, 0, 2)
  assert (demo.optimizer.late_decay_fraction,
          demo.optimizer.late_decay_factor) == experiment.DEMO_LATE_DECAY == (
              0.8, 0.2)
  assert paper.mesh.cpu_devices == quick.mesh.cpu_devices == 0
  doc = " ".join(experiment._demo.__doc__.split())  # pylint: disable=protected-access
  assert f"{experiment.DEMO_STEPS:,} steps" in doc
  lr = f"{experiment.DEMO_LR:.0e}".replace("e-0", "e-")
  assert f"learning rate {lr}" in doc


@pytest.mark.slow
def test_cli_smoke_trains_and_evaluates(tmp_path):
  """``python -m ocjax.main ...:demo,tiny,smoke`` (the README's first
  command, in miniature): 4 steps on two CPU devices, the untrained baseline before them, an evaluation at step 2 and at the end, the
  learning curve, and the final line with both ARI-FGs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def main(*flags):
    r = subprocess.run(
        [sys.executable, "-m", "ocjax.main",
         "--config=experiments/slot_attention.py:demo,tiny,smoke",
         f"--workdir={tmp_path}", "--config.train.eval_every=2", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

  # On two CPU devices (the demo's mesh.cpu_devices: the batch split).
  out = main()
  assert "of batch 4 (1 micro-batch(es)) on 2 device(s)" in out
  assert os.path.isdir(tmp_path / "checkpoints" / "latest" / "4")
  with open(tmp_path / "eval" / "4.json") as f:
    report = json.load(f)
  assert report["step"] == 4 and report["num_images"] == 8
  assert report["train_seconds"] > 0  # from the checkpoint: on the curve
  for seg in ("attention", "decoder"):
    assert np.isfinite(report[f"fixed/{seg}/ari_fg"])
  # The model's loss (the MSE in [-1, 1]) is 4x the evaluator's [0, 1] MSE.
  assert report["loss_l2"] == pytest.approx(4 * report["mse"], rel=1e-4)
  # The untrained model, scored the same way before the first step.
  with open(tmp_path / "eval" / "untrained.json") as f:
    untrained = json.load(f)
  assert untrained["step"] == 0 and untrained["num_images"] == 8
  assert untrained["mse"] != report["mse"]
  assert (f"Held-out ARI-FG {report['fixed/decoder/ari_fg']:.3f} "
          "(fixed/decoder masks, 8 test images, step 4); untrained "
          f"{untrained['fixed/decoder/ari_fg']:.3f}") in out
  assert (tmp_path / "curve.png").stat().st_size > 1000
  # A resumed run (from step 4's checkpoint; on one device now) has no
  # untrained state to score: the baseline is not computed again.
  os.remove(tmp_path / "eval" / "untrained.json")
  out = main("--config.train.num_steps=6", "--config.mesh.cpu_devices=0")
  assert "Resuming from the checkpoint of step 4" in out
  assert "on 2 device(s)" not in out
  assert not os.path.exists(tmp_path / "eval" / "untrained.json")
  assert "step 6); MSC-FG" in out
