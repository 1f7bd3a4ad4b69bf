"""Official GENESIS (v1) checkpoints (PyTorch) <-> ocjax variables.

The official code (applied-ai-lab/genesis, ``models/genesis_config.py``)
stores a ``state_dict`` with names such as
``att_process.core.q_z_nn.0.conv.weight`` in PyTorch layouts (OIHW
convolutions, ``[in, out, kh, kw]`` transposed convolutions, ``[out, in]``
linear layers, LSTM gates in (i, f, g, o) row blocks) plus buffers: the
BatchNorms' ``running_mean``, ``running_var`` and ``num_batches_tracked``, and
``std`` (the per-slot pixel std). `torch_to_variables` maps it onto
`ocjax.models.genesis.Genesis`'s ``params`` and ``batch_stats`` (checking
``std`` against the config), `variables_to_torch` maps back, and
`params_to_torch` maps parameters only (also gradients).

Layouts that differ from a plain transpose:

* ``q_z_nn.5.conv.weight`` ``[2F, C, k, k]`` (the full-map gated
  convolution) is a dense ``[k k C, 2F]`` kernel, rows in (H, W, C) order;
* ``p_x_nn.0.conv.weight`` ``[M, 2F, k, k]`` (the 1x1 -> k x k gated
  transposed convolution) is a dense ``[M, k k 2F]`` kernel, columns in
  (H, W, C) order;
* the component encoder's hidden layer reads a channel-major flattening.

Files are read with `load_state_dict` (``.npz`` with torch names, optionally
prefixed ``param/``, or ``.pth``/``.ckpt`` when PyTorch is installed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocjax.convert import genesis_v2 as g2
from ocjax.convert import monet as monet_convert
from ocjax.nn import gated_conv

load_state_dict = g2.load_state_dict

_CORE = "att_process.core"


def _map_to_vector(k: int, c_in: int):
  """``[2F, C, k, k]`` <-> ``[k k C, 2F]``."""
  def fwd(w):
    return np.transpose(w, (2, 3, 1, 0)).reshape(k * k * c_in, -1)

  def inv(kernel):
    return np.transpose(kernel.reshape(k, k, c_in, -1), (3, 2, 0, 1))

  return fwd, inv


def _vector_to_map(k: int, c_out: int):
  """``[M, 2F, k, k]`` <-> ``[M, k k 2F]``."""
  def fwd(w):
    return np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1)

  def inv(kernel):
    return np.transpose(kernel.reshape(-1, k, k, c_out), (0, 3, 1, 2))

  return fwd, inv


def _gated_norms(t: g2._Table, torch_prefix: str, path: str) -> None:
  for n in ("h_norm", "g_norm"):
    t.add(f"{torch_prefix}.{n}.weight", f"{path}/{n}/scale")
    t.add(f"{torch_prefix}.{n}.bias", f"{path}/{n}/bias")


def _lstm(t: g2._Table, torch_prefix: str, path: str) -> None:
  t.add(f"{torch_prefix}.weight_ih_l0", f"{path}/input/kernel", g2._linear,
        g2._linear)
  t.add(f"{torch_prefix}.bias_ih_l0", f"{path}/input/bias")
  t.add(f"{torch_prefix}.weight_hh_l0", f"{path}/hidden/kernel", g2._linear,
        g2._linear)
  t.add(f"{torch_prefix}.bias_hh_l0", f"{path}/hidden/bias")


def _norm_kinds(config: Any) -> tuple[str, str]:
  return str(config.encoder_norm), str(config.decoder_norm)


def parameter_table(config: Any) -> g2._Table:
  """The parameter correspondence for a GENESIS configuration.

  ``config``: the ``model`` config (or the model): image_size,
  mask_latent_dim, encoder_channels, decoder_layers, encoder_norm,
  decoder_norm, autoregressive_prior, component_prior.
  """
  t = g2._Table()
  enc_norm, dec_norm = _norm_kinds(config)
  k, _ = gated_conv.mask_vae_layout(config.image_size)
  # Mask encoder (README §3.1).
  enc_ch = gated_conv.ENCODER_CHANNELS
  for i in range(len(enc_ch)):
    t.conv(f"{_CORE}.q_z_nn.{i}.conv", f"mask_encoder/layer_{i}/conv")
    if enc_norm != "none":
      _gated_norms(t, f"{_CORE}.q_z_nn.{i}", f"mask_encoder/layer_{i}")
  last = len(enc_ch)
  fwd, inv = _map_to_vector(k, enc_ch[-1])
  t.add(f"{_CORE}.q_z_nn.{last}.conv.weight",
        f"mask_encoder/layer_{last}/kernel", fwd, inv)
  t.add(f"{_CORE}.q_z_nn.{last}.conv.bias", f"mask_encoder/layer_{last}/bias")
  # Posterior (§3.2).
  t.linear(f"{_CORE}.q_z_mean", "posterior_mean")
  t.linear(f"{_CORE}.q_z_var.0", "posterior_var")
  _lstm(t, "att_process.lstm", "posterior_lstm")
  t.linear("att_process.linear", "posterior_linear")
  # Mask decoder (§3.3).
  dec_ch = gated_conv.DECODER_CHANNELS
  fwd, inv = _vector_to_map(k, 2 * dec_ch[0])
  t.add(f"{_CORE}.p_x_nn.0.conv.weight", "mask_decoder/layer_0/kernel", fwd,
        inv)
  t.add(f"{_CORE}.p_x_nn.0.conv.bias", "mask_decoder/layer_0/bias")
  for i in range(1, len(dec_ch) + 1):
    t.add(f"{_CORE}.p_x_nn.{i}.conv.weight",
          f"mask_decoder/layer_{i}/conv/kernel", g2._deconv, g2._deconv_inv)
    t.add(f"{_CORE}.p_x_nn.{i}.conv.bias", f"mask_decoder/layer_{i}/conv/bias")
    if dec_norm != "none":
      _gated_norms(t, f"{_CORE}.p_x_nn.{i}", f"mask_decoder/layer_{i}")
  t.conv(f"{_CORE}.p_x_mean", "mask_decoder/out")
  # Component VAE (§3.6).
  monet_convert.add_component_vae(t, "comp_vae", "component_vae",
                                  config.image_size, config.encoder_channels,
                                  config.decoder_layers)
  # Priors (§3.8-3.9).
  if config.autoregressive_prior:
    _lstm(t, "prior_lstm", "prior/lstm")
    t.linear("prior_linear", "prior/linear")
  if config.component_prior:
    for i, j in enumerate((0, 2, 4)):
      t.linear(f"prior_mlp.{j}", f"component_prior_net/dense_{i}")
  return t


def _as_int32(x):
  return np.asarray(x).astype(np.int32)


def _as_int64(x):
  return np.asarray(x).astype(np.int64)


def buffer_table(config: Any) -> g2._Table:
  """The BatchNorm buffers (``batch_stats``) of a configuration."""
  t = g2._Table()
  enc_norm, dec_norm = _norm_kinds(config)
  layers = []
  if enc_norm == "bn":
    layers += [(f"{_CORE}.q_z_nn.{i}", f"mask_encoder/layer_{i}")
               for i in range(len(gated_conv.ENCODER_CHANNELS))]
  if dec_norm == "bn":
    layers += [(f"{_CORE}.p_x_nn.{i}", f"mask_decoder/layer_{i}")
               for i in range(1, len(gated_conv.DECODER_CHANNELS) + 1)]
  for torch_prefix, path in layers:
    for n in ("h_norm", "g_norm"):
      t.add(f"{torch_prefix}.{n}.running_mean", f"{path}/{n}/mean")
      t.add(f"{torch_prefix}.{n}.running_var", f"{path}/{n}/var")
      t.add(f"{torch_prefix}.{n}.num_batches_tracked",
            f"{path}/{n}/num_batches_tracked", _as_int32, _as_int64)
  return t


def _description(config: Any) -> str:
  return (f"a GENESIS model with num_slots={config.num_slots}, "
          f"image_size={config.image_size}, "
          f"mask_latent_dim={config.mask_latent_dim}, "
          f"encoder_norm={config.encoder_norm!r}, "
          f"decoder_norm={config.decoder_norm!r}, "
          f"autoregressive_prior={config.autoregressive_prior}, "
          f"component_prior={config.component_prior}")


def _check(state_dict: dict[str, Any], config: Any) -> tuple[g2._Table,
                                                             g2._Table]:
  params, buffers = parameter_table(config), buffer_table(config)
  both = g2._Table()
  both.rows = params.rows + buffers.rows
  monet_convert.check_names(both, state_dict, monet_convert.BUFFERS,
                            _description(config))
  monet_convert.check_std(state_dict, config, model="GENESIS")
  return params, buffers


def torch_to_variables(state_dict: dict[str, np.ndarray], config: Any,
                       *, dtype=np.float32) -> dict[str, Any]:
  """Maps an official state dict onto ``{"params", "batch_stats"}``.

  Args:
    state_dict: torch name -> array (torch layout), parameters and the
      BatchNorm buffers; ``std`` is optional and, if present, must equal the
      config's pixel stds.
    config: the ``model`` config (or the model itself).
    dtype: floating dtype of the result (``num_batches_tracked`` stays int).

  Raises:
    ValueError: naming the missing or unexpected entries, or a ``std`` that
      disagrees with the config.
  """
  params, buffers = _check(state_dict, config)
  variables = {"params": monet_convert.apply_table(params, state_dict,
                                                   dtype=dtype)}
  if buffers.rows:
    variables["batch_stats"] = monet_convert.apply_table(
        buffers, state_dict, dtype=dtype)
  return variables


def torch_to_params(state_dict: dict[str, np.ndarray], config: Any,
                    *, dtype=np.float32) -> dict[str, Any]:
  """The ``params`` of `torch_to_variables` (same checks)."""
  return torch_to_variables(state_dict, config, dtype=dtype)["params"]


def params_to_torch(params: Any, config: Any) -> dict[str, np.ndarray]:
  """Parameters (or gradients) -> torch names and layouts."""
  return monet_convert.invert_table(parameter_table(config), params)


def variables_to_torch(variables: Any, config: Any) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_variables`: a complete official state dict
  (parameters, BatchNorm buffers and ``std``)."""
  out = params_to_torch(variables["params"], config)
  buffers = buffer_table(config)
  if buffers.rows:
    out.update(monet_convert.invert_table(buffers, variables["batch_stats"]))
  out["std"] = monet_convert.pixel_std_buffer(config)
  return out
