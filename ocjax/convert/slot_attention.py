"""Official Slot Attention weights (TensorFlow 2 / Keras) <-> ocjax parameters.

The official object-discovery model (google-research ``slot_attention/``,
``SlotAttentionAutoEncoder``) has 48 trainable weights whose Keras names come
from global layer counters (``conv2d_3``, ``dense_4``, ...): they are only
meaningful in the order ``model.trainable_weights`` lists them. This module
maps them *by that order and role* (`parameter_table`) onto the parameter
tree of `ocjax.models.slot_attention.SlotAttention`, and back, so official
weights can be evaluated or fine-tuned here and gradients compared.

Layouts: Keras ``Conv2D`` ``[kh, kw, in, out]`` and ``Dense`` ``[in, out]``
are ours as they are; ``Conv2DTranspose`` kernels are ``[kh, kw, out, in]``:
a stride-2 layer (ours: `ConvTranspose2x`, scatter layout) takes the kernel
with its last two axes swapped, a stride-1 layer (ours: an ordinary 'SAME'
convolution) takes it flipped spatially as well. LayerNorm ``gamma``/``beta``
are ``scale``/``bias``; the GRU keeps Keras's ``[D, 3F]`` kernels and
``[2, 3F]`` bias.

Input format: an ``.npz`` of ``name -> array`` (`load_weights`); keys may
carry a ``param/`` prefix, as in ``tests``' reference fixture, and
``meta/param_names`` (the Keras order) is used when present.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]

# The official model's settings (`SlotAttention`'s defaults).
_DEFAULTS = dict(
    slot_size=64, mlp_hidden_size=128, encoder_channels=(64, 64, 64, 64),
    encoder_kernel_sizes=(5, 5, 5, 5), feedforward_sizes=(64, 64),
    decoder_channels=(64, 64, 64, 64, 64, 4),
    decoder_kernel_sizes=(5, 5, 5, 5, 5, 3),
    decoder_strides=(2, 2, 2, 2, 1, 1))

_AE = "slot_attention_auto_encoder"
_SA = f"{_AE}/slot_attention"


def _same(x):
  return np.asarray(x)


def _swap_io(k):  # Conv2DTranspose [kh, kw, out, in] <-> scatter [.., in, out]
  return np.transpose(np.asarray(k), (0, 1, 3, 2))


def _flip_swap_io(k):  # stride-1 Conv2DTranspose <-> ordinary conv kernel
  return np.ascontiguousarray(_swap_io(k)[::-1, ::-1])


@dataclasses.dataclass(frozen=True)
class Row:
  """One weight: its default Keras name, role, our path, Keras shape."""
  keras_name: str
  role: str
  path: tuple[str, ...]
  keras_shape: tuple[int, ...]
  fwd: Transform = _same  # Keras -> ours
  inv: Transform = _same  # ours -> Keras


def _field(config: Any, name: str):
  value = getattr(config, name, None)
  if value is None and hasattr(config, "get"):
    value = config.get(name, None)
  if value is None:
    value = _DEFAULTS[name]
  return tuple(int(v) for v in value) if isinstance(
      value, (tuple, list, np.ndarray)) else int(value)


def _suffix(name: str, i: int) -> str:
  return name if i == 0 else f"{name}_{i}"


def parameter_table(config: Any) -> list[Row]:
  """The weights of a configuration, in Keras's ``trainable_weights`` order.

  ``config``: the ``model`` config (or a `SlotAttention` instance); fields
  it lacks take the official values. Keras names are those of a fresh
  TensorFlow session building the official model (the reference fixture's).
  """
  d = _field(config, "slot_size")
  hidden = _field(config, "mlp_hidden_size")
  enc = _field(config, "encoder_channels")
  enc_k = _field(config, "encoder_kernel_sizes")
  ff = _field(config, "feedforward_sizes")
  dec = _field(config, "decoder_channels")
  dec_k = _field(config, "decoder_kernel_sizes")
  dec_s = _field(config, "decoder_strides")
  rows: list[Row] = []

  def add(name, role, path, shape, fwd=_same, inv=_same):
    rows.append(Row(name, role, tuple(path.split("/")), tuple(shape), fwd,
                    inv))

  c_in = 3
  for i, (c, k) in enumerate(zip(enc, enc_k)):
    n = _suffix("conv2d", i)
    add(f"{n}/kernel", f"encoder conv {i} kernel", f"encoder_conv_{i}/kernel",
        (k, k, c_in, c))
    add(f"{n}/bias", f"encoder conv {i} bias", f"encoder_conv_{i}/bias", (c,))
    c_in = c
  c_in = d
  for i, (c, k, s) in enumerate(zip(dec, dec_k, dec_s)):
    n = _suffix("conv2d_transpose", i)
    fwd, inv = (_swap_io, _swap_io) if s == 2 else (_flip_swap_io,
                                                    _flip_swap_io)
    add(f"{n}/kernel", f"decoder transposed conv {i} kernel",
        f"decoder/conv_{i}/kernel", (k, k, c, c_in), fwd, inv)
    add(f"{n}/bias", f"decoder transposed conv {i} bias",
        f"decoder/conv_{i}/bias", (c,))
    c_in = c
  for prefix, role, path, feats in (
      (f"{_AE}/soft_position_embed/dense", "encoder position embedding",
       "encoder_pos_embed/dense", enc[-1]),
      (f"{_AE}/soft_position_embed_1/dense_1", "decoder position embedding",
       "decoder/pos_embed/dense", d)):
    add(f"{prefix}/kernel", f"{role} kernel", f"{path}/kernel", (4, feats))
    add(f"{prefix}/bias", f"{role} bias", f"{path}/bias", (feats,))
  add(f"{_AE}/layer_normalization/gamma", "encoder LayerNorm gamma",
      "encoder_norm/scale", (enc[-1],))
  add(f"{_AE}/layer_normalization/beta", "encoder LayerNorm beta",
      "encoder_norm/bias", (enc[-1],))
  f_in = enc[-1]
  for i, f in enumerate(ff):
    n = f"dense_{2 + i}"
    add(f"{n}/kernel", f"feed-forward {i} kernel", f"feedforward_{i}/kernel",
        (f_in, f))
    add(f"{n}/bias", f"feed-forward {i} bias", f"feedforward_{i}/bias", (f,))
    f_in = f
  add("slots_mu", "slots_mu", "slot_attention/slots_mu", (1, 1, d))
  add("slots_log_sigma", "slots_log_sigma", "slot_attention/slots_log_sigma",
      (1, 1, d))
  for j, (role, path, width) in enumerate(
      (("norm_inputs", "slot_attention/norm_inputs", f_in),
       ("norm_slots", "slot_attention/iteration/norm_slots", d),
       ("norm_mlp", "slot_attention/iteration/norm_mlp", d)), start=1):
    add(f"{_SA}/layer_normalization_{j}/gamma", f"{role} gamma",
        f"{path}/scale", (width,))
    add(f"{_SA}/layer_normalization_{j}/beta", f"{role} beta",
        f"{path}/bias", (width,))
  add(f"{_SA}/q/kernel", "q projection", "slot_attention/iteration/project_q/"
      "kernel", (d, d))
  add(f"{_SA}/k/kernel", "k projection", "slot_attention/project_k/kernel",
      (f_in, d))
  add(f"{_SA}/v/kernel", "v projection", "slot_attention/project_v/kernel",
      (f_in, d))
  gru = "slot_attention/iteration/gru"
  add(f"{_SA}/gru_cell/kernel", "GRU kernel", f"{gru}/kernel", (d, 3 * d))
  add(f"{_SA}/gru_cell/recurrent_kernel", "GRU recurrent kernel",
      f"{gru}/recurrent_kernel", (d, 3 * d))
  add(f"{_SA}/gru_cell/bias", "GRU bias", f"{gru}/bias", (2, 3 * d))
  for i, (n_in, n_out) in enumerate(((d, hidden), (hidden, d))):
    n = f"dense_{2 + len(ff) + i}"
    add(f"{n}/kernel", f"slot MLP {i} kernel",
        f"slot_attention/iteration/mlp_{i}/kernel", (n_in, n_out))
    add(f"{n}/bias", f"slot MLP {i} bias",
        f"slot_attention/iteration/mlp_{i}/bias", (n_out,))
  return rows


def _names_for(table: list[Row], names: Sequence[str] | None) -> list[str]:
  if names is None:
    return [r.keras_name for r in table]
  names = [str(n) for n in names]
  if len(names) != len(table):
    roles = [r.role for r in table]
    extra = names[len(table):]
    raise ValueError(
        f"The weight order lists {len(names)} weights but this "
        f"configuration has {len(table)}: "
        + (f"unexpected trailing weights {extra[:8]}" if extra else
           f"missing the roles {roles[len(names):][:8]}") + ".")
  return names


def keras_to_params(weights: Mapping[str, np.ndarray], config: Any, *,
                    names: Sequence[str] | None = None,
                    dtype=np.float32) -> dict[str, Any]:
  """Maps official Keras weights onto the `SlotAttention` parameter tree.

  Args:
    weights: Keras weight name (without ``:0``) -> array.
    config: the ``model`` config (see `parameter_table`).
    names: the Keras names in ``trainable_weights`` order (the fixture's
      ``meta/param_names``); matched to the roles by position. None: the
      names of a fresh session (`parameter_table`).
    dtype: dtype of the returned arrays.

  Raises:
    ValueError: naming missing or unexpected weights, or a weight whose
      shape does not fit the configuration.
  """
  table = parameter_table(config)
  names = _names_for(table, names)
  given = set(weights)
  missing = [n for n in names if n not in given]
  unexpected = sorted(given - set(names))
  if missing or unexpected:
    raise ValueError(
        "The weights do not match this Slot Attention configuration: missing "
        f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
        f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}.")
  params: dict[str, Any] = {}
  for name, row in zip(names, table):
    value = np.asarray(weights[name])
    if value.shape != row.keras_shape:
      raise ValueError(
          f"Weight {name!r} ({row.role}) has shape {value.shape}; this "
          f"configuration needs {row.keras_shape}.")
    node = params
    for key in row.path[:-1]:
      node = node.setdefault(key, {})
    node[row.path[-1]] = row.fwd(value).astype(dtype)
  return params


def params_to_keras(params: Any, config: Any, *,
                    names: Sequence[str] | None = None
                    ) -> dict[str, np.ndarray]:
  """The inverse of `keras_to_params` (also maps gradients)."""
  table = parameter_table(config)
  out = {}
  for name, row in zip(_names_for(table, names), table):
    node = params
    for key in row.path:
      node = node[key]
    out[name] = row.inv(np.asarray(node))
  return out


def load_weights(path: str) -> tuple[dict[str, np.ndarray], list[str] | None]:
  """``(name -> array, Keras order or None)`` from an ``.npz``.

  Keys ``param/<name>`` (the reference fixture's layout) are used if any,
  else every key; ``meta/param_names`` gives the order when present.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"No weights file at {path!r}.")
  with np.load(path, allow_pickle=False) as data:
    keys = [k for k in data.files if k.startswith("param/")]
    if keys:
      weights = {k[len("param/"):]: data[k] for k in keys}
    else:
      weights = {k: data[k] for k in data.files if not k.startswith("meta/")}
    names = ([str(n) for n in data["meta/param_names"]]
             if "meta/param_names" in data.files else None)
  weights = {k[:-2] if k.endswith(":0") else k: v for k, v in weights.items()}
  return weights, names


def save_weights(path: str, params: Any, config: Any) -> None:
  """Writes our parameters as official Keras weights (``.npz``), with the
  order in ``meta/param_names``."""
  weights = params_to_keras(params, config)
  np.savez(path, **weights,
           **{"meta/param_names": np.array(list(weights), dtype=str)})
