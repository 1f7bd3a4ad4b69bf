r"""FID Inception-v3 weights (pytorch-fid's state dict) -> Flax variables.

The standard FID weights are pytorch-fid's port of TF's 2015-12-05 Inception
graph, ``pt_inception-2015-12-05-6726825d.pth`` (about 91 MB; released at
https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights). Nothing
here downloads it: fetch it once, then name the file. Accepted files:

* the ``.pth`` itself (read with PyTorch when it is importable);
* an ``.npz`` of the same state dict (no PyTorch needed at run time), made
  once where PyTorch is installed with

    python -c "import numpy as np, torch; sd = torch.load(\
'pt_inception-2015-12-05-6726825d.pth', map_location='cpu'); \
np.savez('pt_inception-2015-12-05.npz', \
**{k: v.numpy() for k, v in sd.items()})"

  or ``python -m ocjax.convert.inception --pth=FILE.pth --out=FILE.npz``.

Names map one to one onto `ocjax.nn.inception.FIDInceptionV3`
(``Mixed_5b.branch1x1.conv.weight`` -> ``params/Mixed_5b/branch1x1/conv/
kernel``, OIHW -> HWIO; ``bn.weight/bias`` -> ``scale/bias``;
``bn.running_mean/var`` -> ``batch_stats/.../mean/var``). The classifier
(``fc.*``) and ``num_batches_tracked`` are ignored. A state dict with every
layer narrower by the same factor loads as a smaller network
(``width_divisor``): that is how tests run the whole FID pipeline with a tiny
random extractor (``--random_tiny=OUT.npz``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import inception as inception_net

STANDARD_FILE = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_SHA256_PREFIX = "6726825d"
RELEASE_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
               f"fid_weights/{STANDARD_FILE}")
FIRST_CONV = "Conv2d_1a_3x3.conv.weight"
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# (torch layer, torch parameter) -> (collection, flax leaf).
_LEAVES = {
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}
_TORCH_NAMES = {v: k for k, v in _LEAVES.items()}
_HELP = (f"Expected pytorch-fid's {STANDARD_FILE} ({RELEASE_URL}) or an .npz "
         "of its state dict; see docs/eval.md (nothing is downloaded).")


class WeightsError(ValueError):
  """The named weights file is missing, unreadable or of another network."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict (torch names -> arrays) from ``.npz`` or ``.pth``."""
  if not path:
    raise WeightsError(f"No Inception weights file given. {_HELP}")
  if not os.path.isfile(path):
    raise WeightsError(f"Inception weights file {path!r} does not exist. "
                       f"{_HELP}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        sd = {k: np.asarray(data[k]) for k in data.files}
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(f"Cannot read {path!r} as .npz: {e}. {_HELP}") from e
    if any(k.startswith("param/") for k in sd):
      sd = {k[len("param/"):]: v for k, v in sd.items()
            if k.startswith("param/")}
    return sd
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise WeightsError(
        f"Reading {path!r} needs PyTorch (pip install torch), or convert it "
        "once to .npz where PyTorch is installed: python -m "
        "ocjax.convert.inception --pth=FILE.pth --out=FILE.npz") from e
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"Cannot read {path!r} with torch.load: {e}. "
                       f"{_HELP}") from e
  for key in ("state_dict", "model_state_dict"):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  if not isinstance(sd, dict):
    raise WeightsError(f"{path!r} holds a {type(sd).__name__}, not a state "
                       f"dict. {_HELP}")
  return {k: v.detach().cpu().numpy() for k, v in sd.items()
          if hasattr(v, "detach")}


def infer_width_divisor(state_dict: dict[str, np.ndarray],
                        source: str = "the state dict") -> int:
  """32 / (filters of the first convolution): 1 for the real network."""
  if FIRST_CONV not in state_dict:
    some = sorted(state_dict)[:5]
    raise WeightsError(f"{source} has no {FIRST_CONV!r} (it has "
                       f"{len(state_dict)} entries, e.g. {some}); it is not "
                       f"an FID Inception-v3 state dict. {_HELP}")
  out = int(np.shape(state_dict[FIRST_CONV])[0])
  if out <= 0 or 32 % out:
    raise WeightsError(f"{source}: {FIRST_CONV} has {out} filters; expected "
                       "32 (or 32 / n for a narrowed test network).")
  return 32 // out


def _flax_path(name: str) -> tuple[str, ...] | None:
  """Torch name -> (collection, *modules, leaf); None if ignored."""
  if name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES):
    return None
  parts = name.split(".")
  if len(parts) < 3 or tuple(parts[-2:]) not in _LEAVES:
    return ("?",) + tuple(parts)
  collection, leaf = _LEAVES[tuple(parts[-2:])]
  return (collection, *parts[:-1], leaf)


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  if name.endswith("conv.weight") and np.ndim(value) == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  return np.asarray(value)


def _flatten(tree: Any, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def abstract_variables(width_divisor: int = 1) -> dict[str, Any]:
  """Shapes of `FIDInceptionV3`'s variables (no computation)."""
  module = inception_net.FIDInceptionV3(width_divisor=width_divisor)
  return jax.eval_shape(module.init, jax.random.key(0),
                        jnp.zeros((1, 75, 75, 3), jnp.float32))


def torch_to_variables(state_dict: dict[str, np.ndarray], *,
                       source: str = "the state dict"
                       ) -> tuple[dict[str, Any], int]:
  """Maps a pytorch-fid state dict onto `FIDInceptionV3` variables.

  Returns:
    ``(variables, width_divisor)``; ``variables`` has ``params`` and
    ``batch_stats``.

  Raises:
    WeightsError: naming the missing, unexpected or misshapen entries.
  """
  divisor = infer_width_divisor(state_dict, source)
  expected = {path: tuple(x.shape) for path, x in
              _flatten(abstract_variables(divisor)).items()}
  given, unexpected = {}, []
  for name, value in state_dict.items():
    path = _flax_path(name)
    if path is None:
      continue
    if path not in expected:
      unexpected.append(name)
      continue
    given[path] = (name, _to_flax(name, value))
  missing = sorted(".".join(p[1:-1] + _TORCH_NAMES[(p[0], p[-1])][1:])
                   for p in expected if p not in given)
  bad = [f"{n}: {v.shape} (expected {expected[p]})"
         for p, (n, v) in given.items() if tuple(v.shape) != expected[p]]
  if missing or unexpected or bad:
    def head(items):
      return f"{items[:6]}{' ...' if len(items) > 6 else ''}"
    raise WeightsError(
        f"{source} does not match the FID Inception-v3 (width divisor "
        f"{divisor}): {len(missing)} missing {head(missing)}, "
        f"{len(unexpected)} unexpected {head(sorted(unexpected))}, "
        f"{len(bad)} of the wrong shape {head(bad)}. {_HELP}")
  variables: dict[str, Any] = {}
  for path, (_, value) in given.items():
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value.astype(np.float32)
  return variables, divisor


def variables_to_torch(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_variables` (without ``fc``)."""
  out = {}
  for path, value in _flatten(variables).items():
    collection, *modules, leaf = path
    layer, param = _TORCH_NAMES[(collection, leaf)]
    if modules[-1] != layer:
      raise ValueError(f"Unexpected variable {'/'.join(path)}.")
    value = np.asarray(value)
    if param == "weight" and layer == "conv":
      value = np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
    out[".".join(modules + [param])] = value
  return out


def random_state_dict(width_divisor: int = 16,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """A randomly initialised state dict in pytorch-fid's names and layouts.

  He-normal convolutions and mildly random batch-norm statistics keep the
  activations' scale through the network, so the features of a tiny random
  extractor are spread out (for tests of the FID pipeline, not for scores).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, x in sorted(_flatten(abstract_variables(width_divisor)).items()):
    leaf, shape = path[-1], tuple(x.shape)
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:3]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif leaf == "scale":
      value = rng.uniform(0.8, 1.2, shape)
    elif leaf in ("bias", "mean"):
      value = rng.normal(0.0, 0.1, shape)
    else:  # var
      value = rng.uniform(0.5, 1.5, shape)
    flat[path] = value.astype(np.float32)
  return variables_to_torch(_nest(flat))


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def load_fid_inception(path: str, **module_kwargs):
  """``(module, variables)`` of the FID Inception-v3 in ``path``.

  Args:
    path: pytorch-fid's ``.pth`` or an ``.npz`` of its state dict.
    **module_kwargs: further `FIDInceptionV3` fields (dtype, precision).
  """
  state_dict = load_state_dict(path)
  variables, divisor = torch_to_variables(state_dict, source=repr(path))
  module = inception_net.FIDInceptionV3(width_divisor=divisor,
                                        **module_kwargs)
  return module, variables


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m ocjax.convert.inception",
      description="Convert the FID Inception weights to .npz, or write a "
      "tiny random extractor for tests.")
  parser.add_argument("--pth", help=f"pytorch-fid's {STANDARD_FILE}.")
  parser.add_argument("--out", help="Output .npz.")
  parser.add_argument("--random_tiny", help="Write a random narrowed "
                      "extractor's state dict (.npz) here.")
  parser.add_argument("--width_divisor", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.random_tiny:
    sd = random_state_dict(args.width_divisor, args.seed)
    np.savez(args.random_tiny, **sd)
    print(f"Wrote a random FID-Inception (width / {args.width_divisor}, "
          f"{inception_net.feature_dim(args.width_divisor)}-d features) to "
          f"{args.random_tiny}. For pipeline tests only: its FIDs are not "
          "comparable with published ones.")
  elif args.pth and args.out:
    sd = load_state_dict(args.pth)
    torch_to_variables(sd, source=repr(args.pth))  # Validates.
    np.savez(args.out, **sd)
    print(f"Wrote {len(sd)} arrays of {args.pth} to {args.out}.")
  else:
    parser.error("give --pth=FILE.pth --out=FILE.npz, or --random_tiny=OUT")


if __name__ == "__main__":
  main()
