"""Segformer (MiT backbone + all-MLP decoder) as a feature-map generator.

AST-Seg's default feature-map generator (paper 003 Sec. 4.1, Table 4): the
Hugging Face ``SegformerForSemanticSegmentation`` built from the ``nvidia/
mit-b3`` configuration with ``num_labels`` = the feature map's channels, its
hierarchical transformer encoder (Mix Transformer, MiT) initialised from the
ImageNet-1k weights and its decode head random (official
``MF_models_encoder.Segformer_model``). Output: ``[B, H/4, W/4, C]``.

Encoder (per stage i = 0..3): overlapping patch embedding (conv ``k_i``,
stride ``s_i``, padding ``k_i // 2``, LayerNorm), ``depth_i`` layers of

    x = x + DropPath(EfficientSelfAttention(LN(x)))
    x = x + DropPath(MixFFN(LN(x)))

(efficient self-attention: keys and values from the map reduced by a
``sr_i x sr_i`` stride-``sr_i`` conv + LayerNorm; Mix-FFN: Linear -> 3x3
depthwise conv -> GELU -> Linear), then a LayerNorm. Decode head: per stage a
Linear to ``decoder_hidden_size``, bilinear upsampling to the first stage's
size, concatenation (last stage first), 1x1 conv (no bias), BatchNorm, ReLU,
dropout, 1x1 conv classifier. LayerNorm eps 1e-5; GELU exact; stochastic
depth rates ``linspace(0, drop_path_rate, sum(depths))``. Dropout and drop
path draw from the ``dropout`` rng stream in training.

Pretrained weights: the file the user supplies (nothing downloads at run
time): Hugging Face's ``model.safetensors`` (read with NumPy) or
``pytorch_model.bin`` (needs PyTorch), or an ``.npz`` of the same names
(``segformer.encoder...`` or ``encoder...``). Only the encoder is read
(``classifier.*`` / ``decode_head.*`` are ignored, as the official model
does). `load_hf_weights` reads a file; `hf_name` maps our parameter paths to
Hugging Face names.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import batch_norm

Array = jax.Array

TORCH_LAYERNORM_EPS = 1e-5

# Hugging Face MiT configurations (config.json of nvidia/mit-b0 .. b5).
VARIANTS = {
    "mit-b0": dict(depths=(2, 2, 2, 2), hidden_sizes=(32, 64, 160, 256),
                   decoder_hidden_size=256),
    "mit-b1": dict(depths=(2, 2, 2, 2), hidden_sizes=(64, 128, 320, 512),
                   decoder_hidden_size=256),
    "mit-b2": dict(depths=(3, 4, 6, 3), hidden_sizes=(64, 128, 320, 512),
                   decoder_hidden_size=768),
    "mit-b3": dict(depths=(3, 4, 18, 3), hidden_sizes=(64, 128, 320, 512),
                   decoder_hidden_size=768),
    "mit-b4": dict(depths=(3, 8, 27, 3), hidden_sizes=(64, 128, 320, 512),
                   decoder_hidden_size=768),
    "mit-b5": dict(depths=(3, 6, 40, 3), hidden_sizes=(64, 128, 320, 512),
                   decoder_hidden_size=768),
    # A minute configuration for tests.
    "tiny": dict(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 16, 16),
                 decoder_hidden_size=16, num_attention_heads=(1, 2, 2, 2)),
}
DEFAULTS = dict(num_attention_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1),
                patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2),
                mlp_ratio=4, drop_path_rate=0.1, classifier_dropout=0.1)


def variant_config(variant: str) -> dict[str, Any]:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown Segformer variant {variant!r}; known: "
                     f"{sorted(VARIANTS)}.")
  return {**DEFAULTS, **VARIANTS[variant]}


# ---------------------------------------------------------------- weights
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16,
                       "F64": np.float64, "I64": np.int64}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] == "BF16":
      raw = np.frombuffer(data, np.uint16, offset=info["data_offsets"][0],
                          count=int(np.prod(info["shape"], dtype=np.int64)))
      value = (raw.astype(np.uint32) << 16).view(np.float32)
    elif info["dtype"] in _SAFETENSORS_DTYPES:
      dt = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      start, end = info["data_offsets"]
      value = np.frombuffer(data[start:end], dt)
    else:
      raise ValueError(f"{path!r}: tensor {name!r} has dtype "
                       f"{info['dtype']}, which this reader does not know.")
    out[name] = value.reshape(info["shape"]).astype(np.float32)
  return out


@functools.lru_cache(maxsize=2)
def _cached_weights(path: str, mtime: float) -> dict[str, np.ndarray]:
  del mtime  # part of the cache key
  return load_hf_weights(path)


def load_hf_weights(path: str) -> dict[str, np.ndarray]:
  """Encoder weights of a Hugging Face MiT/Segformer checkpoint file.

  Names lose a leading ``segformer.``; ``classifier.*`` and
  ``decode_head.*`` entries are dropped.
  """
  if not path:
    raise ValueError("No Segformer weights file given.")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Segformer weights file {path!r} (config.model.segformer_weights) "
        "does not exist. Download the published MiT-B3 weights once (e.g. "
        "model.safetensors or pytorch_model.bin of huggingface.co/nvidia/"
        "mit-b3) and give its path; nothing is downloaded at run time. "
        "'' trains the Segformer from random weights (Table 4's ablation).")
  if path.endswith(".safetensors"):
    raw = _read_safetensors(path)
  elif path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      raw = {k: data[k] for k in data.files}
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          f"Reading {path!r} needs PyTorch; give the model.safetensors file "
          "instead (read without PyTorch).") from e
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(sd, dict) and "state_dict" in sd:
      sd = sd["state_dict"]
    raw = {k: v.detach().cpu().float().numpy() for k, v in sd.items()}
  out = {}
  for k, v in raw.items():
    if k.startswith("segformer."):
      k = k[len("segformer."):]
    if k.startswith(("classifier.", "decode_head.")):
      continue
    out[k] = np.asarray(v)
  if not any(k.startswith("encoder.") for k in out):
    raise ValueError(f"{path!r} holds no Segformer encoder weights "
                     f"(encoder.*); its names start {sorted(out)[:4]}.")
  return out


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  """Hugging Face layout -> ours for the tensor ``name``."""
  if name.endswith("dwconv.dwconv.weight"):  # [C, 1, 3, 3] -> [3, 3, 1, C]
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 4:  # conv OIHW -> HWIO
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:  # Linear [out, in] -> [in, out]
    return np.transpose(value)
  return value


def _pretrained_init(weights: dict[str, np.ndarray], name: str, path: str):
  def init(key, shape, dtype=jnp.float32):
    del key
    if name not in weights:
      raise ValueError(f"The Segformer weights file {path!r} has no tensor "
                       f"{name!r}: it is not an MiT checkpoint of this "
                       "variant (model.segformer_variant).")
    value = _to_flax(name, weights[name])
    if tuple(value.shape) != tuple(shape):
      raise ValueError(
          f"Segformer weight {name!r} in {path!r} has shape {value.shape} "
          f"(ours), this variant needs {tuple(shape)}: check "
          "model.segformer_variant.")
    return jnp.asarray(value, dtype)
  return init


# ---------------------------------------------------------------- modules
def _normal(std=0.02):
  return nn.initializers.normal(std)


class _Init:
  """Chooses a parameter's initializer: the pretrained tensor (encoder) or
  Hugging Face's random initialisation (normal 0.02, zero bias)."""

  def __init__(self, weights, path):
    self.weights, self.path = weights, path

  def __call__(self, hf: str, default):
    if self.weights is None or not hf.startswith("encoder."):
      return default
    return _pretrained_init(self.weights, hf, self.path)


def _dense(features, init: _Init, hf: str, name: str, dtype):
  return nn.Dense(features, dtype=dtype,
                  kernel_init=init(f"{hf}.weight", _normal()),
                  bias_init=init(f"{hf}.bias", nn.initializers.zeros),
                  name=name)


def _layer_norm(init: _Init, hf: str, name: str, dtype):
  return nn.LayerNorm(epsilon=TORCH_LAYERNORM_EPS, use_fast_variance=False,
                      dtype=dtype,
                      scale_init=init(f"{hf}.weight", nn.initializers.ones),
                      bias_init=init(f"{hf}.bias", nn.initializers.zeros),
                      name=name)


def _drop_path(x: Array, rate: float, module: nn.Module,
               deterministic: bool) -> Array:
  """Stochastic depth per sample (``drop_path`` of Hugging Face)."""
  if rate <= 0 or deterministic:
    return x
  keep = 1.0 - rate
  u = jax.random.uniform(module.make_rng("dropout"),
                         (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return x / keep * jnp.floor(keep + u)


class _Layer(nn.Module):
  """``SegformerLayer``: pre-norm efficient attention and Mix-FFN."""
  hidden: int
  heads: int
  sr: int
  mlp_ratio: int
  drop_path: float
  hf: str
  init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, h: int, w: int, *,
               deterministic: bool) -> Array:
    b, n, c = x.shape
    hf, init, dt = self.hf, self.init, self.dtype
    att = f"{hf}.attention.self"
    y = _layer_norm(init, f"{hf}.layer_norm_1", "layer_norm_1", dt)(x)
    dh = c // self.heads
    q = _dense(c, init, f"{att}.query", "query", dt)(y)
    kv = y
    if self.sr > 1:
      m = kv.reshape(b, h, w, c)
      m = nn.Conv(c, (self.sr, self.sr), strides=(self.sr, self.sr),
                  padding="VALID", dtype=dt,
                  kernel_init=init(f"{att}.sr.weight", _normal()),
                  bias_init=init(f"{att}.sr.bias", nn.initializers.zeros),
                  name="sr")(m)
      kv = _layer_norm(init, f"{att}.layer_norm", "sr_layer_norm", dt)(
          m.reshape(b, -1, c))
    k = _dense(c, init, f"{att}.key", "key", dt)(kv)
    v = _dense(c, init, f"{att}.value", "value", dt)(kv)
    split = lambda t: t.reshape(b, t.shape[1], self.heads, dh)
    scores = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / np.sqrt(dh)
    probs = jax.nn.softmax(scores, axis=-1)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, split(v)).reshape(b, n, c)
    ctx = _dense(c, init, f"{hf}.attention.output.dense", "output", dt)(ctx)
    x = x + _drop_path(ctx, self.drop_path, self, deterministic)
    y = _layer_norm(init, f"{hf}.layer_norm_2", "layer_norm_2", dt)(x)
    hid = c * self.mlp_ratio
    y = _dense(hid, init, f"{hf}.mlp.dense1", "dense1", dt)(y)
    y = nn.Conv(hid, (3, 3), padding=((1, 1), (1, 1)),
                feature_group_count=hid, dtype=dt,
                kernel_init=init(f"{hf}.mlp.dwconv.dwconv.weight", _normal()),
                bias_init=init(f"{hf}.mlp.dwconv.dwconv.bias",
                               nn.initializers.zeros),
                name="dwconv")(y.reshape(b, h, w, hid)).reshape(b, n, hid)
    y = jax.nn.gelu(y, approximate=False)
    y = _dense(c, init, f"{hf}.mlp.dense2", "dense2", dt)(y)
    return x + _drop_path(y, self.drop_path, self, deterministic)


class Segformer(nn.Module):
  """``SegformerForSemanticSegmentation``: ``[B, H, W, 3] -> [B, H/4, W/4,
  out_channels]``; ``__call__(x, *, train)``.

  Attributes:
    out_channels: ``num_labels``.
    weights: the pretrained MiT file ("" = random, as Hugging Face's init).
    variant: "mit-b3" (the paper) or another of `VARIANTS`.
  """
  out_channels: int
  weights: str = ""
  variant: str = "mit-b3"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cfg = variant_config(self.variant)
    # Only initialisation reads the file (a checkpoint holds the weights).
    pretrained = None
    if self.weights and self.is_initializing():
      if not os.path.exists(self.weights):
        load_hf_weights(self.weights)  # raises, naming the file
      pretrained = _cached_weights(self.weights,
                                   os.path.getmtime(self.weights))
    init = _Init(pretrained, self.weights)
    dt = self.dtype
    deterministic = not train
    depths = cfg["depths"]
    rates = np.linspace(0, cfg["drop_path_rate"], sum(depths))
    x = x.astype(dt)
    b = x.shape[0]
    stages = []
    cur = 0
    for i, (depth, hidden) in enumerate(zip(depths, cfg["hidden_sizes"])):
      k, s = cfg["patch_sizes"][i], cfg["strides"][i]
      hf = f"encoder.patch_embeddings.{i}"
      x = nn.Conv(hidden, (k, k), strides=(s, s),
                  padding=((k // 2, k // 2), (k // 2, k // 2)), dtype=dt,
                  kernel_init=init(f"{hf}.proj.weight", _normal()),
                  bias_init=init(f"{hf}.proj.bias", nn.initializers.zeros),
                  name=f"patch_embeddings_{i}_proj")(x)
      _, h, w, _ = x.shape
      t = _layer_norm(init, f"{hf}.layer_norm",
                      f"patch_embeddings_{i}_layer_norm", dt)(
                          x.reshape(b, h * w, hidden))
      for j in range(depth):
        t = _Layer(hidden, cfg["num_attention_heads"][i], cfg["sr_ratios"][i],
                   cfg["mlp_ratio"], float(rates[cur + j]),
                   f"encoder.block.{i}.{j}", init, dt,
                   name=f"block_{i}_{j}")(t, h, w,
                                          deterministic=deterministic)
      cur += depth
      t = _layer_norm(init, f"encoder.layer_norm.{i}", f"layer_norm_{i}", dt)(
          t)
      x = t.reshape(b, h, w, hidden)
      stages.append(x)
    # Decode head (random initialisation in the paper).
    d = cfg["decoder_hidden_size"]
    h0, w0 = stages[0].shape[1:3]
    ups = []
    for i, f in enumerate(stages):
      y = nn.Dense(d, dtype=dt, kernel_init=_normal(),
                   bias_init=nn.initializers.zeros, name=f"linear_c_{i}")(f)
      if y.shape[1:3] != (h0, w0):
        y = jax.image.resize(y, (b, h0, w0, d), "bilinear")
      ups.append(y)
    y = jnp.concatenate(ups[::-1], axis=-1)
    y = nn.Conv(d, (1, 1), use_bias=False, dtype=dt, kernel_init=_normal(),
                name="linear_fuse")(y)
    y = batch_norm.BatchNorm(dtype=dt, name="batch_norm")(
        y, use_running_average=not train)
    y = nn.relu(y)
    y = nn.Dropout(cfg["classifier_dropout"])(y, deterministic=deterministic)
    return nn.Conv(self.out_channels, (1, 1), dtype=dt, kernel_init=_normal(),
                   bias_init=nn.initializers.zeros, name="classifier")(y)


def hf_names(params: Any) -> dict[str, tuple[str, ...]]:
  """Hugging Face encoder name -> our parameter path, for the encoder
  parameters present in ``params`` (a Segformer's parameter tree)."""
  out = {}
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}
  for key, node in params.items():
    if key.startswith("patch_embeddings_"):
      i, part = key[len("patch_embeddings_"):].split("_", 1)
      for p in node:
        out[f"encoder.patch_embeddings.{i}.{part}.{leaf[p]}"] = (key, p)
    elif key.startswith("layer_norm_"):
      i = key[len("layer_norm_"):]
      for p in node:
        out[f"encoder.layer_norm.{i}.{leaf[p]}"] = (key, p)
    elif key.startswith("block_"):
      i, j = key[len("block_"):].split("_")
      hf = f"encoder.block.{i}.{j}"
      names = {"layer_norm_1": f"{hf}.layer_norm_1",
               "layer_norm_2": f"{hf}.layer_norm_2",
               "query": f"{hf}.attention.self.query",
               "key": f"{hf}.attention.self.key",
               "value": f"{hf}.attention.self.value",
               "sr": f"{hf}.attention.self.sr",
               "sr_layer_norm": f"{hf}.attention.self.layer_norm",
               "output": f"{hf}.attention.output.dense",
               "dense1": f"{hf}.mlp.dense1", "dense2": f"{hf}.mlp.dense2",
               "dwconv": f"{hf}.mlp.dwconv.dwconv"}
      for sub, sub_node in node.items():
        for p in sub_node:
          out[f"{names[sub]}.{leaf[p]}"] = (key, sub, p)
  return out


def to_hf(params: Any) -> dict[str, np.ndarray]:
  """Our encoder parameters as Hugging Face tensors (names and layouts)."""
  out = {}
  for name, path in hf_names(params).items():
    node = params
    for p in path:
      node = node[p]
    value = np.asarray(node)
    if name.endswith("dwconv.dwconv.weight") or value.ndim == 4:
      value = np.transpose(value, (3, 2, 0, 1))
    elif value.ndim == 2:
      value = value.T
    out[name] = value
  return out


__all__: Sequence[str] = ("Segformer", "load_hf_weights", "to_hf",
                          "hf_names", "VARIANTS")
