"""Shared machinery of the real image datasets (besides `stream`).

Every dataset here keeps the contract of ``data_pipelines/__init__.py`` and
builds its stream with `stream.indexed_dataset` (one example = one file or
one record at a known offset) or, for GZIP files read front to back, the
parts of `stream`. This module holds what only the image readers share:

* Clear errors for missing files: `require_path`, `require_data_dir`
  (raising `stream.DatasetNotFoundError`: what was expected where, and where
  to get it).
* Resampling that reproduces the papers' code bit for bit where it can:
  PIL's antialiased bilinear resize (torchvision ``Resize``) as TF's
  antialiased bilinear resize rounded to uint8 (equal to within one grey
  level), and the two nearest-neighbour conventions as exact gathers: PIL's
  (pixel centres, ``NEAREST``) and PyTorch's (``F.interpolate`` default).
* PNG decoding with checks of signature and size, and directory listings.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from data_pipelines import stream


# ------------------------------------------------------------ missing files


def require_path(path: str, *, what: str, expected: str, where: str,
                 kind: str = "any") -> str:
  """Returns ``path`` or raises `DatasetNotFoundError` saying what is missing.

  Args:
    path: the path that must exist.
    what: the dataset and the role of the path ("ShapeStacks split file").
    expected: the expected layout, shown in the message.
    where: where the user gets the data.
    kind: "dir", "file" or "any".
  """
  ok = {"dir": os.path.isdir, "file": os.path.isfile,
        "any": os.path.exists}[kind](path)
  if not ok:
    raise stream.DatasetNotFoundError(
        f"{what} not found: {path!r} does not exist"
        f"{' or is not a directory' if kind == 'dir' else ''}.\n"
        f"Expected layout:\n{expected}\nGet the data from: {where}\n"
        "(Set --config.data.data_dir to the folder holding it; nothing is "
        "downloaded at run time.)")
  return path


def require_data_dir(config: Any, *, what: str, expected: str,
                     where: str) -> str:
  """``config.data_dir`` as an existing directory, or a clear error."""
  data_dir = str(config.get("data_dir", "") or "")
  if not data_dir:
    raise stream.DatasetNotFoundError(
        f"{what}: config field data.data_dir is empty. Set it to the folder "
        f"holding the downloaded files (--config.data.data_dir=DIR).\n"
        f"Expected layout:\n{expected}\nGet the data from: {where}")
  return require_path(os.path.expanduser(data_dir), what=what,
                      expected=expected, where=where, kind="dir")


# ------------------------------------------------------ crops and resizes


def center_crop_offsets(height: int, width: int, crop_h: int,
                        crop_w: int) -> tuple[int, int]:
  """Top-left corner of a centre crop (floor, as PIL ``box`` and NumPy)."""
  if crop_h > height or crop_w > width:
    raise ValueError(f"Crop {crop_h}x{crop_w} larger than the image "
                     f"{height}x{width}.")
  return (height - crop_h) // 2, (width - crop_w) // 2


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source pixels of PIL's ``NEAREST`` resize from ``n_in`` to ``n_out``.

  PIL samples the pixel centre ``(i + 0.5) * n_in / n_out``, accumulated in
  double precision; the accumulation is reproduced so that boundary cases
  (e.g. 640 -> 170 at i = 42) round as PIL rounds them.
  """
  scale = n_in / n_out
  out = np.empty(n_out, np.int64)
  x = 0.5 * scale
  for i in range(n_out):
    out[i] = min(int(x), n_in - 1)
    x += scale
  return out


def torch_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source pixels of PyTorch's ``F.interpolate(mode='nearest')``.

  ``floor(i * scale)`` in float32 with ``scale = n_in / n_out``.
  """
  if n_in == n_out:
    return np.arange(n_out)
  scale = np.float32(n_in) / np.float32(n_out)
  idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, n_in - 1)


NEAREST_CONVENTIONS = {"pil": pil_nearest_indices,
                       "torch": torch_nearest_indices}


def resize_nearest(x, size: tuple[int, int], in_size: tuple[int, int],
                   convention: str):
  """Nearest-neighbour resize of ``x`` ``[H, W, ...]`` as an exact gather."""
  tf_ = stream.tf()
  fn = NEAREST_CONVENTIONS[convention]
  rows = fn(in_size[0], size[0])
  cols = fn(in_size[1], size[1])
  x = tf_.gather(x, rows, axis=0)
  return tf_.gather(x, cols, axis=1)


def resize_bilinear_uint8(x, size: tuple[int, int]):
  """PIL-style antialiased bilinear resize of uint8 ``x`` ``[H, W, C]``.

  Returns float32 in [0, 255], rounded to integers as PIL's uint8 output.
  """
  tf_ = stream.tf()
  y = tf_.image.resize(tf_.cast(x, tf_.float32), size, method="bilinear",
                       antialias=True)
  return tf_.round(tf_.clip_by_value(y, 0.0, 255.0))


def resize_image(x, size: tuple[int, int], in_size: tuple[int, int],
                 method: str):
  """Resize of a uint8 image to float32 in [0, 255] (no-op at same size).

  ``method``: "bilinear" (PIL/torchvision), "nearest_torch" (GENESIS's
  ``F.interpolate``) or "nearest_pil".
  """
  tf_ = stream.tf()
  if tuple(size) == tuple(in_size):
    return tf_.cast(x, tf_.float32)
  if method == "bilinear":
    return resize_bilinear_uint8(x, size)
  if method in ("nearest_torch", "nearest_pil"):
    return tf_.cast(resize_nearest(x, size, in_size, method.split("_")[1]),
                    tf_.float32)
  raise ValueError(f"Unknown resize method {method!r}; expected 'bilinear', "
                   "'nearest_torch' or 'nearest_pil'.")


RESIZE_METHODS = ("bilinear", "nearest_torch", "nearest_pil")


def to_unit(x):
  """float32 [0, 255] -> [0, 1]."""
  return x / 255.0


def assert_shape(x, expected: Sequence[int], message: Sequence[Any]):
  """``x`` with a runtime check of its leading dims naming the source."""
  tf_ = stream.tf()
  shape = tf_.shape(x, out_type=tf_.int64)[:len(expected)]
  ok = tf_.reduce_all(tf_.equal(shape, tf_.constant(expected, tf_.int64)))
  check = tf_.debugging.Assert(
      ok, list(message) + ["has shape", tf_.shape(x), "expected",
                           tf_.constant(list(expected))], summarize=8)
  with tf_.control_dependencies([check]):
    return tf_.identity(x)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png_checked(contents, path, *, channels: int, shape: Sequence[int],
                       what: str):
  """Decodes PNG ``contents`` uint8, checking signature and ``[H, W]``."""
  tf_ = stream.tf()
  is_png = tf_.equal(tf_.strings.substr(contents, 0, 8), _PNG_SIGNATURE)
  check = tf_.debugging.Assert(is_png, [what, path, "is not a PNG file"])
  with tf_.control_dependencies([check]):
    image = tf_.io.decode_png(contents, channels=channels, dtype=tf_.uint8)
  return assert_shape(image, shape, [what, path])


def read_png_checked(path, *, channels: int, shape: Sequence[int], what: str):
  tf_ = stream.tf()
  return decode_png_checked(tf_.io.read_file(path), path, channels=channels,
                            shape=shape, what=what)


# ----------------------------------------------------------------- misc


def list_files(directory: str) -> list[str]:
  """Sorted names of the regular files in ``directory`` ([] if missing)."""
  try:
    with os.scandir(directory) as it:
      return sorted(e.name for e in it if e.is_file())
  except FileNotFoundError:
    return []


def list_dirs(directory: str) -> list[str]:
  try:
    with os.scandir(directory) as it:
      return sorted(e.name for e in it if e.is_dir())
  except FileNotFoundError:
    return []
