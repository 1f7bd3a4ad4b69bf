"""Official AST-Seg checkpoints (PyTorch) <-> ocjax variables.

The official code (BrunoSauvalle/AST) saves the foreground model as
``{'encoder_state_dict': netE, 'generator_state_dict': netG,
'background_encoder_state_dict': BE, 'background_generator_state_dict': BG,
'trainer_state_dict', 'optimizer_state_dict'}`` (``MF_train.py``) and the
phase-1 background model as ``{'encoder_state_dict': BE,
'generator_state_dict': BG, 'complexity', ...}`` (``background/utils.py``).
Here a state dict is one flat ``name -> array`` map whose names carry the
network as a prefix, ``netE.`` / ``netG.`` (the reference fixture's names)
and ``netBE.`` / ``netBG.`` for the background autoencoder, e.g.
``netE.feature_and_attention_map_generator.downsample_blocks.0.bloc1.0.weight``.

`torch_to_variables` maps one onto `ocjax.models.ast_seg.AstSeg`'s
``params`` and ``batch_stats`` (BatchNorm ``running_mean``/``running_var``/
``num_batches_tracked``), `variables_to_torch` maps back and `params_to_torch` maps
parameters (or gradients) only. Layouts: OIHW convolutions -> HWIO,
``ConvTranspose2d`` ``[in, out, kh, kw]`` -> ``[kh, kw, in, out]``,
``Linear`` ``[out, in]`` -> ``[in, out]``, ``in_proj_weight [3d, d]`` ->
``[d, 3d]``, the local background logit ``[1, 1, 1, H, W]`` -> ``[H, W]``.
Constant tensors stored as parameters (``netE.position_map``,
``netG.background_mask``, ``netG.background_mask_logit``, the background
autoencoder's ``positional_encoding``) are checked against ours when given
and written back by `variables_to_torch`.

`load_checkpoint` reads such a file (``.npz`` with these names, optionally
prefixed ``param/`` and ``buffer/`` as in the fixture, or an official
``.pth`` when PyTorch is installed); `export_background` writes the
background autoencoder of a trained (phase-1) run as the ``.npz`` that
``model.background_weights`` reads:

    python -m ocjax.convert.ast_seg export-background RUN_DIR OUT.npz
    python -m ocjax.convert.ast_seg export-background OFFICIAL.pth OUT.npz \
        --image_size=64 [--simple_background]
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from ocjax.convert import genesis_v2 as g2
from ocjax.convert import monet as monet_convert
from ocjax.nn import ast_unet
from ocjax.nn import background_ae
from ocjax.nn import glimpse as glimpse_lib

_FMG = "netE.feature_and_attention_map_generator"
_UNET = "feature_and_attention_map_generator"


def _field(config: Any, name: str, default=None):
  value = getattr(config, name, None)
  if value is None and hasattr(config, "get"):
    value = config.get(name, None)
  return default if value is None else value


def _local_logit(x):  # [1, 1, 1, H, W] -> [H, W]
  return np.asarray(x).reshape(x.shape[-2:])


def _local_logit_inv(x):
  return np.asarray(x)[None, None, None]


def _as_int32(x):
  return np.asarray(x).astype(np.int32)


def _as_int64(x):
  return np.asarray(x).astype(np.int64)


def _unet_levels(config: Any) -> tuple[int, ...]:
  size = int(_field(config, "image_size"))
  widths = tuple(_field(config, "unet_widths", ()) or ())
  return widths or ast_unet.default_widths(size, size)


def _unet_blocks(widths) -> list[tuple[str, str, str]]:
  """(torch prefix, flax path, kind) of every conv(+BN) of the U-Net."""
  nl = len(widths) - 1
  rows = [("first_feature_map", "first_feature_map", "conv_bn")]
  for i in range(nl):
    for b in (1, 2):
      rows.append((f"downsample_blocks.{i}.bloc{b}",
                   f"downsample_{i}_bloc{b}", "conv_bn"))
  rows.append(("center_block", "center_block", "conv_bn"))
  for i in range(nl):
    rows.append((f"upsample_blocks.{i}.bloc1", f"upsample_{i}_bloc1",
                 "conv_bn"))
    rows.append((f"upsample_blocks.{i}.bloc2", f"upsample_{i}_bloc2",
                 "deconv_bn"))
  rows.append(("last_skip_layer", "last_skip_layer", "conv_bn"))
  return rows


def _background_rows(t: g2._Table, config: Any) -> None:
  size = int(_field(config, "image_size"))
  complexity = bool(_field(config, "background_complexity", True))
  enc = background_ae.layout(size, size)
  gen = background_ae.layout(size, size, generator=True)
  background_ae.channels(len(enc), complexity, generator=False)
  for i in range(len(enc)):
    p = f"netBE.background_encoder.{i}.downsample"
    t.add(f"{p}.0.weight", f"background_ae/encoder/conv_{i}", g2._conv,
          g2._conv_inv)
    t.add(f"{p}.1.weight", f"background_ae/encoder/norm_{i}/scale")
    t.add(f"{p}.1.bias", f"background_ae/encoder/norm_{i}/bias")
  n = len(gen)
  for j in range(n):
    p = f"netBG.background_generator.{j}.upsample"
    t.add(f"{p}.0.weight", f"background_ae/generator/deconv_{j}",
          g2._deconv, g2._deconv_inv)
    if j != n - 1:
      t.add(f"{p}.1.weight", f"background_ae/generator/norm_{j}/scale")
      t.add(f"{p}.1.bias", f"background_ae/generator/norm_{j}/bias")


def parameter_table(config: Any) -> g2._Table:
  """The trainable parameters of a configuration (``model`` config or the
  model): torch name <-> flax path."""
  t = g2._Table()
  phase = str(_field(config, "phase", "objects"))
  if bool(_field(config, "background_model", True)):
    _background_rows(t, config)
  if phase == "background":
    return t
  if str(_field(config, "feature_generator", "unet")) != "unet":
    raise NotImplementedError(
        "The official-checkpoint converter maps the U-Net feature-map "
        "generator; the Segformer's weights load through "
        "ocjax.nn.segformer (model.segformer_weights).")
  for tp, fp, kind in _unet_blocks(_unet_levels(config)):
    fwd, inv = ((g2._deconv, g2._deconv_inv) if kind == "deconv_bn"
                else (g2._conv, g2._conv_inv))
    t.add(f"{_FMG}.{tp}.0.weight", f"{_UNET}/{fp}/conv/kernel", fwd, inv)
    t.add(f"{_FMG}.{tp}.1.weight", f"{_UNET}/{fp}/bn/scale")
    t.add(f"{_FMG}.{tp}.1.bias", f"{_UNET}/{fp}/bn/bias")
  t.add(f"{_FMG}.last_residual_layer.weight",
        f"{_UNET}/last_residual_layer/kernel", g2._conv, g2._conv_inv)
  t.add(f"{_FMG}.conv1x1.weight", f"{_UNET}/conv1x1/kernel", g2._conv,
        g2._conv_inv)
  if bool(_field(config, "use_transformer", True)):
    t.linear("netE.feature_vector_embedding", "feature_vector_embedding")
    for i in range(int(_field(config, "transformer_layers", 6))):
      tp, fp = f"netE.transformer.layers.{i}", f"transformer/layers_{i}"
      t.add(f"{tp}.self_attn.in_proj_weight",
            f"{fp}/self_attn/in_proj_kernel", g2._linear, g2._linear)
      t.add(f"{tp}.self_attn.in_proj_bias", f"{fp}/self_attn/in_proj_bias")
      t.linear(f"{tp}.self_attn.out_proj", f"{fp}/self_attn/out_proj")
      t.linear(f"{tp}.linear1", f"{fp}/linear1")
      t.linear(f"{tp}.linear2", f"{fp}/linear2")
      for n in ("norm1", "norm2"):
        t.add(f"{tp}.{n}.weight", f"{fp}/{n}/scale")
        t.add(f"{tp}.{n}.bias", f"{fp}/{n}/bias")
    t.linear("netE.latents_projection", "latents_projection")
  t.add("netG.background_activation_logit", "background_activation_logit")
  if bool(_field(config, "variable_background_activation", False)):
    t.add("netG.local_background_activation_logit",
          "local_background_activation_logit", _local_logit,
          _local_logit_inv)
  size = int(_field(config, "image_size"))
  g = int(_field(config, "glimpse_size", 0)) or (
      glimpse_lib.default_glimpse_size(size, size))
  n = len(glimpse_lib.glimpse_channels(g))
  for j in range(n):
    t.add(f"netG.glimpse_generator.{3 * j}.weight",
          f"glimpse_generator/deconv_{j}", g2._deconv, g2._deconv_inv)
    if j < n - 1:
      t.add(f"netG.glimpse_generator.{3 * j + 1}.weight",
            f"glimpse_generator/norm_{j}/scale")
      t.add(f"netG.glimpse_generator.{3 * j + 1}.bias",
            f"glimpse_generator/norm_{j}/bias")
  t.add(f"netG.glimpse_generator.{3 * (n - 1)}.bias",
        "glimpse_generator/bias")
  return t


def buffer_table(config: Any) -> g2._Table:
  """The BatchNorm buffers (``batch_stats``) of a configuration."""
  t = g2._Table()
  if str(_field(config, "phase", "objects")) == "background":
    return t
  for tp, fp, _ in _unet_blocks(_unet_levels(config)):
    t.add(f"{_FMG}.{tp}.1.running_mean", f"{_UNET}/{fp}/bn/mean")
    t.add(f"{_FMG}.{tp}.1.running_var", f"{_UNET}/{fp}/bn/var")
    t.add(f"{_FMG}.{tp}.1.num_batches_tracked",
          f"{_UNET}/{fp}/bn/num_batches_tracked", _as_int32, _as_int64)
  return t


def constants(config: Any) -> dict[str, np.ndarray]:
  """The official model's constant tensors stored as parameters."""
  from ocjax.models import ast_seg  # pylint: disable=g-import-not-at-top
  size = int(_field(config, "image_size"))
  out = {}
  if bool(_field(config, "background_model", True)):
    for prefix, gen in (("netBE.background_encoder", False),
                        ("netBG.background_generator", True)):
      blocks = background_ae.layout(size, size, generator=gen)
      order = list(reversed(blocks)) if gen else blocks
      for j, blk in enumerate(order):
        shape = blk["out_shape"] if gen else blk["shape"]
        out[f"{prefix}.{j}.positional_encoding"] = np.transpose(
            background_ae.position_map(*shape), (2, 0, 1))[None]
  if str(_field(config, "phase", "objects")) == "background":
    return out
  pos = np.asarray(ast_seg.position_map(size, size))  # U-Net: full size
  out["netE.position_map"] = np.transpose(pos, (2, 0, 1))[None]
  out["netG.background_mask_logit"] = np.zeros((1, 1, 1, 1, 1), np.float32)
  out["netG.background_mask"] = np.ones((1, 1, 1, 1, 1), np.float32)
  return out


def _description(config: Any) -> str:
  return ("an AST-Seg model with "
          + ", ".join(f"{f}={_field(config, f)!r}" for f in (
              "image_size", "num_slots", "z_what_dim", "isotropic_scaling",
              "unet_widths", "use_transformer", "transformer_layers",
              "glimpse_size", "variable_background_activation",
              "background_model", "background_complexity", "phase")))


def _check(state_dict: dict[str, Any], config: Any):
  params, buffers = parameter_table(config), buffer_table(config)
  both = g2._Table()
  both.rows = params.rows + buffers.rows
  consts = constants(config)
  monet_convert.check_names(both, state_dict, tuple(consts),
                            _description(config))
  for name, want in consts.items():
    if name in state_dict:
      got = np.asarray(state_dict[name])
      if got.shape != want.shape or not np.allclose(got, want, atol=1e-6):
        raise ValueError(
            f"The state dict's constant {name!r} (shape {got.shape}) differs "
            f"from this model's (shape {want.shape}): it was made for another "
            f"image size or model ({_description(config)}).")
  return params, buffers


def torch_to_variables(state_dict: dict[str, np.ndarray], config: Any, *,
                       dtype=np.float32) -> dict[str, Any]:
  """Maps an official state dict onto ``{"params", "batch_stats"}``.

  Args:
    state_dict: prefixed torch name -> array (module doc), parameters and
      BatchNorm buffers.
    config: the ``model`` config (or the model itself).
    dtype: floating dtype of the result (counters stay int32).

  Raises:
    ValueError: naming missing or unexpected entries, or a constant that
      does not match the configuration.
  """
  params, buffers = _check(state_dict, config)
  variables = {"params": monet_convert.apply_table(params, state_dict,
                                                   dtype=dtype)}
  stats = (monet_convert.apply_table(buffers, state_dict, dtype=dtype)
           if buffers.rows else {})
  if stats:
    variables["batch_stats"] = stats
  return variables


def params_to_torch(params: Any, config: Any) -> dict[str, np.ndarray]:
  """Parameters (or gradients) -> prefixed torch names and layouts."""
  return monet_convert.invert_table(parameter_table(config), params)


def variables_to_torch(variables: Any, config: Any) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_variables`: parameters, BatchNorm buffers and
  the constant tensors."""
  out = params_to_torch(variables["params"], config)
  buffers = buffer_table(config)
  if buffers.rows:
    out.update(monet_convert.invert_table(buffers, variables["batch_stats"]))
  out.update(constants(config))
  return out


# ------------------------------------------------------------------ files
_OFFICIAL_KEYS = {"encoder_state_dict": "netE.",
                  "generator_state_dict": "netG.",
                  "background_encoder_state_dict": "netBE.",
                  "background_generator_state_dict": "netBG."}


def from_official_checkpoint(ckpt: dict[str, Any]) -> tuple[dict, int]:
  """``(prefixed state dict, step)`` of a loaded official checkpoint dict
  (foreground ``MF_train`` or phase-1 ``background/utils`` format)."""
  def arrays(sd):
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach")
                else np.asarray(v)) for k, v in sd.items()}
  keys = dict(_OFFICIAL_KEYS)
  if "complexity" in ckpt:  # the phase-1 background checkpoint
    keys = {"encoder_state_dict": "netBE.", "generator_state_dict": "netBG."}
  out = {}
  for key, prefix in keys.items():
    if key in ckpt:
      out.update({prefix + k: v for k, v in arrays(ckpt[key]).items()})
  if not out:
    raise ValueError(
        f"Not an official AST checkpoint: none of {sorted(keys)} in its keys "
        f"{sorted(ckpt)[:8]}.")
  step = int(ckpt.get("trainer_state_dict", {}).get("step", 0))
  return out, step


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], int]:
  """``(prefixed state dict, step)`` from ``.npz`` or an official ``.pth``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No AST-Seg checkpoint file at {path!r}.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      prefixed = [k for k in data.files if k.startswith(("param/",
                                                         "buffer/"))]
      if prefixed:
        sd = {k.split("/", 1)[1]: data[k] for k in prefixed}
      else:
        sd = {k: data[k] for k in data.files if not k.startswith("meta/")}
      step = int(data["meta/training_step"]) if (
          "meta/training_step" in data.files) else 0
    return sd, step
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path!r} needs PyTorch (`pip install torch`); or save its "
        "state dicts once to .npz with the prefixes of this module.") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=False)
  if not isinstance(ckpt, dict):
    raise ValueError(f"{path!r} holds a {type(ckpt).__name__}, not an "
                     "official AST checkpoint.")
  return from_official_checkpoint(ckpt)


def background_weights(params: Any) -> dict[str, np.ndarray]:
  """The background autoencoder's parameters as the flat ``name -> array``
  map that ``model.background_weights`` reads (``encoder/conv_0``, ...)."""
  if "background_ae" not in params:
    raise ValueError("These parameters have no background autoencoder "
                     "(model.background_model=False).")
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict) or hasattr(v, "items"):
        walk(v, f"{prefix}{k}/")
      else:
        out[f"{prefix}{k}"] = np.asarray(v)

  walk(params["background_ae"], "")
  return out


def export_background(source: str, out_path: str, *, image_size: int = 0,
                      complexity: bool = True) -> str:
  """Writes the background autoencoder of ``source`` to ``out_path``.

  ``source``: an ocjax run directory (its newest checkpoint, e.g. the
  phase-1 run) or an official background / foreground checkpoint
  (``.pth``/``.npz``; give ``image_size`` and ``complexity``).
  """
  if os.path.isdir(source):
    from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
    _, state = run_lib.restore(source)
    weights = background_weights(state.params)
  else:
    if image_size <= 0:
      raise ValueError("Converting an official checkpoint needs its image "
                       "size (--image_size).")
    sd, _ = load_checkpoint(source)
    config = dict(image_size=image_size, background_complexity=complexity,
                  background_model=True, phase="background")
    sd = {k: v for k, v in sd.items() if k.startswith(("netBE.", "netBG."))}
    variables = torch_to_variables(sd, config)
    weights = background_weights(variables["params"])
  np.savez(out_path, **weights)
  return out_path


def main(argv: list[str]) -> int:
  if len(argv) < 3 or argv[0] != "export-background":
    print(__doc__)
    return 2
  opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "1")
              for a in argv[3:])
  path = export_background(argv[1], argv[2],
                           image_size=int(opts.get("image_size", 0)),
                           complexity="simple_background" not in opts)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
