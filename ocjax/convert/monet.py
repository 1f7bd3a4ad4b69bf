"""Official MONet-G checkpoints (GENESIS code, PyTorch) <-> ocjax parameters.

The official code (applied-ai-lab/genesis, ``models/monet_config.py``) stores a
``state_dict`` with names such as ``att_process.core.down.0.0.weight`` in
PyTorch layouts (OIHW convolutions, ``[out, in]`` linear layers, channel-major
flattening before the UNet bottleneck MLP and the component encoder's hidden
layer) and one buffer, ``std`` (the per-slot pixel std ``[1, 1, 1, 1, K]``).
`torch_to_params` maps the parameters onto `ocjax.models.monet.MONet`'s tree
and checks ``std`` against the config; `params_to_torch` maps back (also
gradients). Layout helpers and `load_state_dict` (``.npz`` with torch names,
optionally prefixed ``param/``, or ``.pth``/``.ckpt`` when PyTorch is
installed) are GENESIS-V2's (`ocjax.convert.genesis_v2`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocjax.convert import genesis_v2 as g2
from ocjax.nn import unet

load_state_dict = g2.load_state_dict

BUFFERS = ("std",)


def add_component_vae(t: g2._Table, torch_prefix: str, path: str,
                      image_size: int, encoder_channels: int,
                      decoder_layers: int) -> None:
  """Rows of `ocjax.nn.component_vae.ComponentVAE` (MONet's component VAE).

  ``<prefix>.encoder_module.module.{0,2,4,6,9,11}`` and
  ``<prefix>.decoder_module.seq.{1,3,...,2n-1, 2n+1}``.
  """
  enc = f"{torch_prefix}.encoder_module.module"
  for i, j in enumerate((0, 2, 4, 6)):
    t.conv(f"{enc}.{j}", f"{path}/encoder/conv_{i}")
  # The hidden layer reads the [2C, H/16, W/16] map flattened channel-major.
  in_fwd, in_inv, *_ = g2._bottleneck_transforms(2 * encoder_channels,
                                                  image_size // 16)
  t.add(f"{enc}.9.weight", f"{path}/encoder/hidden/kernel", in_fwd, in_inv)
  t.add(f"{enc}.9.bias", f"{path}/encoder/hidden/bias")
  t.linear(f"{enc}.11", f"{path}/encoder/out")
  dec = f"{torch_prefix}.decoder_module.seq"
  for i in range(decoder_layers):
    t.conv(f"{dec}.{2 * i + 1}", f"{path}/decoder/conv_{i}")
  t.conv(f"{dec}.{2 * decoder_layers + 1}", f"{path}/decoder/out")


def add_unet(t: g2._Table, torch_prefix: str, path: str, image_size: int,
             filter_start: int) -> None:
  """Rows of the GENESIS UNet (`ocjax.nn.unet.UNet`) under ``path``."""
  num_blocks = unet.num_unet_blocks(image_size)
  down, up = unet.unet_channels(num_blocks, filter_start)
  for i in range(len(down)):
    t.block(f"{torch_prefix}.down.{i}", f"{path}/down_{i}")
  for i in range(len(up)):
    t.block(f"{torch_prefix}.up.{i}", f"{path}/up_{i}")
  in_fwd, in_inv, out_fwd, out_inv, b_fwd, b_inv = g2._bottleneck_transforms(
      down[-1], image_size // 2 ** (num_blocks - 1))
  t.add(f"{torch_prefix}.mlp.1.weight", f"{path}/mlp_0/kernel", in_fwd, in_inv)
  t.add(f"{torch_prefix}.mlp.1.bias", f"{path}/mlp_0/bias")
  t.linear(f"{torch_prefix}.mlp.3", f"{path}/mlp_1")
  t.add(f"{torch_prefix}.mlp.5.weight", f"{path}/mlp_2/kernel", out_fwd,
        out_inv)
  t.add(f"{torch_prefix}.mlp.5.bias", f"{path}/mlp_2/bias", b_fwd, b_inv)


def parameter_table(config: Any) -> g2._Table:
  """The name/layout correspondence for a MONet configuration.

  ``config``: the ``model`` config (or the model): image_size, filter_start,
  encoder_channels, decoder_layers.
  """
  t = g2._Table()
  add_unet(t, "att_process.core", "attention/unet", config.image_size,
           config.filter_start)
  t.conv("att_process.core.final_conv", "attention/logit")
  add_component_vae(t, "comp_vae", "component_vae", config.image_size,
                    config.encoder_channels, config.decoder_layers)
  return t


def pixel_std_buffer(config: Any) -> np.ndarray:
  """The official ``std`` buffer ``[1, 1, 1, 1, K]`` of a configuration."""
  std = np.full((config.num_slots,), np.float32(config.pixel_std2), np.float32)
  std[0] = np.float32(config.pixel_std1)
  return std.reshape(1, 1, 1, 1, -1)


def check_std(state_dict: dict[str, np.ndarray], config: Any,
              model: str = "MONet") -> None:
  """Raises if the state dict's ``std`` buffer disagrees with the config."""
  if "std" not in state_dict:
    return
  want = pixel_std_buffer(config)
  got = np.asarray(state_dict["std"], np.float32)
  if got.shape != want.shape or not np.array_equal(got, want):
    raise ValueError(
        f"The state dict's pixel std buffer `std` {got.ravel().tolist()} does "
        f"not match the {model} config (num_slots={config.num_slots}, "
        f"pixel_std1={config.pixel_std1}, pixel_std2={config.pixel_std2}); "
        "set those fields to the checkpoint's values.")


def check_names(table: g2._Table, state_dict: dict[str, Any],
                optional: tuple[str, ...], description: str) -> None:
  """Raises naming the missing and unexpected entries of a state dict."""
  expected = {row[0] for row in table.rows}
  given = set(state_dict) - set(optional)
  missing, unexpected = sorted(expected - given), sorted(given - expected)
  if missing or unexpected:
    raise ValueError(
        f"The state dict does not match {description}: missing "
        f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
        f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}.")


def apply_table(table: g2._Table, state_dict: dict[str, Any], *,
                dtype) -> dict[str, Any]:
  """The nested tree of ``table``'s rows filled from ``state_dict``."""
  tree: dict[str, Any] = {}
  for name, path, fwd, _ in table.rows:
    value = np.asarray(fwd(np.asarray(state_dict[name])))
    if dtype is not None and np.issubdtype(value.dtype, np.floating):
      value = value.astype(dtype)
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    if path[-1] in node:
      raise AssertionError(f"Two rows map to {'/'.join(path)}.")
    node[path[-1]] = value
  return tree


def invert_table(table: g2._Table, tree: Any) -> dict[str, np.ndarray]:
  """``{torch name: array}`` of ``tree`` (the inverse of `apply_table`)."""
  out = {}
  for name, path, _, inv in table.rows:
    node = tree
    for key in path:
      node = node[key]
    out[name] = np.asarray(inv(np.asarray(node)))
  return out


def _description(config: Any) -> str:
  return (f"a MONet model with num_slots={config.num_slots}, "
          f"image_size={config.image_size}, "
          f"filter_start={config.filter_start}, "
          f"encoder_channels={config.encoder_channels}, "
          f"decoder_layers={config.decoder_layers}")


def torch_to_params(state_dict: dict[str, np.ndarray], config: Any,
                    *, dtype=np.float32) -> dict[str, Any]:
  """Maps an official MONet state dict onto the `MONet` parameter tree.

  Args:
    state_dict: torch name -> array (torch layout); the ``std`` buffer is
      optional and, if present, must equal the config's pixel stds.
    config: the ``model`` config (or the model itself).

  Raises:
    ValueError: naming the missing or unexpected entries, or a ``std`` that
      disagrees with the config.
  """
  table = parameter_table(config)
  check_names(table, state_dict, BUFFERS, _description(config))
  check_std(state_dict, config)
  return apply_table(table, state_dict, dtype=dtype)


def params_to_torch(params: Any, config: Any, *,
                    include_buffers: bool = False) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_params` (also maps gradients).

  ``include_buffers`` adds the ``std`` buffer of the config (a complete
  official state dict).
  """
  out = invert_table(parameter_table(config), params)
  if include_buffers:
    out["std"] = pixel_std_buffer(config)
  return out
