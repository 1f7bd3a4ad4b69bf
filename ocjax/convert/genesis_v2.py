"""Official GENESIS-V2 checkpoints (PyTorch) <-> ocjax parameters.

The official code (applied-ai-lab/genesis, ``models/genesisv2_config.py``)
stores a ``state_dict`` with names such as ``encoder.down.0.0.weight`` in
PyTorch layouts (OIHW convolutions, ``[out, in]`` linear layers,
``[in, out, kh, kw]`` transposed convolutions, channel-major flattening at the
UNet bottleneck). `torch_to_params` maps it onto `GenesisV2`'s parameter tree
and `params_to_torch` maps back, so official checkpoints can be evaluated,
fine-tuned or compared here, and our gradients compared with theirs.

Accepted inputs (`load_state_dict`): a ``.npz`` of the state dict (keys are
the torch names, optionally prefixed ``param/``), or a ``.pth``/``.ckpt``
saved by the official ``train.py`` (its ``model_state_dict`` entry) when
PyTorch is installed.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from ocjax.nn import unet

Transform = Callable[[np.ndarray], np.ndarray]


def _conv(w):  # [O, I, kh, kw] -> [kh, kw, I, O]
  return np.transpose(w, (2, 3, 1, 0))


def _conv_inv(k):
  return np.transpose(k, (3, 2, 0, 1))


def _deconv(w):  # [I, O, kh, kw] -> [kh, kw, I, O] (scatter layout)
  return np.transpose(w, (2, 3, 0, 1))


def _deconv_inv(k):
  return np.transpose(k, (2, 3, 0, 1))


def _linear(w):  # [out, in] -> [in, out]
  return np.transpose(w)


def _same(x):
  return np.asarray(x)


class _Table:
  """Ordered (torch name, flax path, forward, inverse) rows."""

  def __init__(self):
    self.rows: list[tuple[str, tuple[str, ...], Transform, Transform]] = []

  def add(self, torch_name, path, fwd=_same, inv=_same):
    self.rows.append((torch_name, tuple(path.split("/")), fwd, inv))

  def block(self, torch_prefix, path):
    """Conv(no bias)-GN-ReLU block: ``<prefix>.0`` conv, ``<prefix>.1`` GN."""
    self.add(f"{torch_prefix}.0.weight", f"{path}/conv/kernel", _conv,
             _conv_inv)
    self.add(f"{torch_prefix}.1.weight", f"{path}/norm/scale")
    self.add(f"{torch_prefix}.1.bias", f"{path}/norm/bias")

  def conv(self, torch_prefix, path):
    self.add(f"{torch_prefix}.weight", f"{path}/kernel", _conv, _conv_inv)
    self.add(f"{torch_prefix}.bias", f"{path}/bias")

  def linear(self, torch_prefix, path):
    self.add(f"{torch_prefix}.weight", f"{path}/kernel", _linear, _linear)
    self.add(f"{torch_prefix}.bias", f"{path}/bias")


def _bottleneck_transforms(channels: int, size: int):
  """The UNet MLP flattens NCHW maps; ours flattens NHWC ones."""
  c, s = channels, size

  def in_fwd(w):  # [128, (C,H,W)] -> [(H,W,C), 128]
    k = w.T.reshape(c, s, s, -1)
    return np.transpose(k, (1, 2, 0, 3)).reshape(s * s * c, -1)

  def in_inv(k):
    w = k.reshape(s, s, c, -1)
    return np.transpose(w, (2, 0, 1, 3)).reshape(c * s * s, -1).T

  def out_fwd(w):  # [(C,H,W), 128] -> [128, (H,W,C)]
    k = w.T.reshape(-1, c, s, s)
    return np.transpose(k, (0, 2, 3, 1)).reshape(-1, s * s * c)

  def out_inv(k):
    w = k.reshape(-1, s, s, c)
    return np.transpose(w, (0, 3, 1, 2)).reshape(-1, c * s * s).T

  def bias_fwd(b):
    return np.transpose(b.reshape(c, s, s), (1, 2, 0)).reshape(-1)

  def bias_inv(b):
    return np.transpose(b.reshape(s, s, c), (2, 0, 1)).reshape(-1)

  return in_fwd, in_inv, out_fwd, out_inv, bias_fwd, bias_inv


def parameter_table(image_size: int = 64, feat_dim: int = 64,
                    semiconv: bool = True,
                    autoregressive_prior: bool = True) -> _Table:
  """The name/layout correspondence for a GENESIS-V2 configuration."""
  t = _Table()
  num_blocks = unet.num_unet_blocks(image_size)
  down, up = unet.unet_channels(num_blocks, min(feat_dim, 64))
  for i in range(len(down)):
    t.block(f"encoder.down.{i}", f"encoder/down_{i}")
  for i in range(len(up)):
    t.block(f"encoder.up.{i}", f"encoder/up_{i}")
  in_fwd, in_inv, out_fwd, out_inv, b_fwd, b_inv = _bottleneck_transforms(
      down[-1], image_size // 2 ** (num_blocks - 1))
  t.add("encoder.mlp.1.weight", "encoder/mlp_0/kernel", in_fwd, in_inv)
  t.add("encoder.mlp.1.bias", "encoder/mlp_0/bias")
  t.linear("encoder.mlp.3", "encoder/mlp_1")
  t.add("encoder.mlp.5.weight", "encoder/mlp_2/kernel", out_fwd, out_inv)
  t.add("encoder.mlp.5.bias", "encoder/mlp_2/bias", b_fwd, b_inv)
  t.add("att_process.log_sigma", "icsbp/log_sigma")
  if semiconv:
    t.conv("att_process.colour_head.conv", "embedding/conv")
    t.add("att_process.colour_head.gate.gate", "embedding/gate")
  else:
    t.conv("att_process.colour_head", "embedding")
  t.block("seg_head", "attention_block")
  t.block("feat_head.0", "feature_block")
  t.conv("feat_head.1", "feature_proj")
  t.add("z_head.0.weight", "posterior_norm/scale")
  t.add("z_head.0.bias", "posterior_norm/bias")
  t.linear("z_head.1", "posterior_hidden")
  t.linear("z_head.3", "posterior_out")
  for i, j in enumerate((1, 4, 7, 10)):
    t.add(f"decoder_module.{j}.weight", f"decoder/deconv_{i}/kernel", _deconv,
          _deconv_inv)
    t.add(f"decoder_module.{j}.bias", f"decoder/deconv_{i}/bias")
    t.add(f"decoder_module.{j + 1}.weight", f"decoder/norm_{i}/scale")
    t.add(f"decoder_module.{j + 1}.bias", f"decoder/norm_{i}/bias")
  t.conv("decoder_module.13", "decoder/out")
  if autoregressive_prior:
    t.add("prior_lstm.weight_ih_l0", "prior/lstm/input/kernel", _linear,
          _linear)
    t.add("prior_lstm.bias_ih_l0", "prior/lstm/input/bias")
    t.add("prior_lstm.weight_hh_l0", "prior/lstm/hidden/kernel", _linear,
          _linear)
    t.add("prior_lstm.bias_hh_l0", "prior/lstm/hidden/bias")
    t.linear("prior_linear", "prior/linear")
  return t


def _table_for(config: Any) -> _Table:
  return parameter_table(
      image_size=config.image_size, feat_dim=config.feat_dim,
      semiconv=config.semiconv,
      autoregressive_prior=config.autoregressive_prior)


def torch_to_params(state_dict: dict[str, np.ndarray], config: Any,
                    *, dtype=np.float32) -> dict[str, Any]:
  """Maps an official state dict onto the `GenesisV2` parameter tree.

  Args:
    state_dict: torch parameter name -> array (torch layout).
    config: the ``model`` config (image_size, feat_dim, semiconv,
      autoregressive_prior).

  Raises:
    ValueError: naming the missing or unexpected parameters, or a parameter
      whose shape does not fit the configuration.
  """
  table = _table_for(config)
  expected = {row[0] for row in table.rows}
  given = set(state_dict)
  missing, unexpected = sorted(expected - given), sorted(given - expected)
  if missing or unexpected:
    raise ValueError(
        "The state dict does not match a GENESIS-V2 model with "
        f"image_size={config.image_size}, feat_dim={config.feat_dim}, "
        f"semiconv={config.semiconv}, "
        f"autoregressive_prior={config.autoregressive_prior}: missing "
        f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
        f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}.")
  params: dict[str, Any] = {}
  for name, path, fwd, _ in table.rows:
    value = fwd(np.asarray(state_dict[name])).astype(dtype)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return params


def params_to_torch(params: Any, config: Any) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_params` (also maps gradients)."""
  out = {}
  for name, path, _, inv in _table_for(config).rows:
    node = params
    for key in path:
      node = node[key]
    out[name] = inv(np.asarray(node))
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads an official state dict from ``.npz`` or ``.pth``/``.ckpt``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint file at {path!r}.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      keys = [k for k in data.files if k.startswith("param/")]
      if keys:
        return {k[len("param/"):]: data[k] for k in keys}
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path!r} needs PyTorch (`pip install torch`); or convert it "
        "once to .npz with numpy: np.savez(out, **{k: v.numpy() for k, v in "
        "torch.load(path)['model_state_dict'].items()}).") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=False)
  if isinstance(ckpt, dict) and "model_state_dict" in ckpt:
    ckpt = ckpt["model_state_dict"]
  if not isinstance(ckpt, dict):
    raise ValueError(f"{path!r} holds a {type(ckpt).__name__}, not a state "
                     "dict or an official training checkpoint.")
  # Buffers of older checkpoints that the model does not need.
  return {k: v.detach().cpu().numpy() for k, v in ckpt.items()
          if not k.endswith(("pixel_coords.g_1", "pixel_coords.g_2"))}
