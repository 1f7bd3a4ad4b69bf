"""tf.data input pipelines for ocjax.

The contract every dataset here keeps (see ../shared/DESIGN.md):

* A batch is a dict of NumPy arrays:
    - images: ``image`` float32 in [0, 1], ``[B, H, W, 3]``;
    - videos: ``video`` float32 in [0, 1], ``[B, T, H, W, 3]``;
    - optional ground truth ``segmentation`` int32 ``[B, (T,) H, W]`` with
      0 = background and object ids 1..N (track ids, stable over time).
* ``get_dataset(config, split, batch_size=G, seed=S, start_step=s)`` returns
  this process's share of the *global* batch ``G``: ``G // process_count``
  rows. The global batch at step ``s`` is the same whatever the number of
  processes, and the stream is a pure function of ``(config, split, seed,
  G)``: starting at ``start_step=s`` yields exactly what the stream would have
  yielded after ``s`` batches. That is how a killed run resumes its data.
* Training splits repeat forever (a new deterministic permutation per epoch);
  evaluation splits (``repeat=False``) are finite and keep the last partial
  batch, with a boolean ``valid`` field ``[B]`` marking the padding rows so
  every batch has the same shape for jit.
* Nothing downloads. ``config.data_dir`` names a directory with the published
  files; when it is empty the procedural generators provide the data.

Datasets are looked up by ``config.name`` in ``DATASETS``: a table of module
names, imported on first use so that one dataset's optional dependencies do not
burden the others. A module provides ``default_config()``,
``get_dataset(config, split, *, batch_size, seed, start_step, process_index,
process_count, repeat)`` and ``num_examples(config, split)``, and may provide
``preset_config(preset)`` and ``user_preprocessing(config)``. The modules
build their streams with `data_pipelines.stream`, the one stream engine
(configs, seeds, index streams, tf.data, errors, TFRecord access).
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

# name -> module implementing it.
DATASETS: dict[str, str] = {
    # Procedural, no download.
    "sprites": "data_pipelines.sprites",
    "tetrominoes_like": "data_pipelines.tetrominoes_like",
    # CLEVR-like scenes (ray cast; also written once by
    # `python -m data_pipelines.generate clevr_like`).
    "clevr_like": "data_pipelines.clevr_like",
    # Real image datasets, read from the published files (data_dir).
    "objects_room": "data_pipelines.multi_object",
    "clevr_with_masks": "data_pipelines.multi_object",
    "multi_dsprites": "data_pipelines.multi_object",
    "tetrominoes": "data_pipelines.multi_object",
    "shapestacks": "data_pipelines.shapestacks",
    "sketchy": "data_pipelines.sketchy",
    "apc": "data_pipelines.apc",
    "clevrtex": "data_pipelines.clevrtex",
    # Videos. Procedural (no download; or a directory written by
    # `python -m data_pipelines.generate NAME`):
    "bouncing_balls": "data_pipelines.bouncing_balls",
    "clevrer_like": "data_pipelines.clevrer_like",
    "p2d": "data_pipelines.p2d",  # Needs pybullet (pip install .[sim]).
    # Real videos, read from the published files (data_dir):
    "bouncing_balls_rnem": "data_pipelines.bouncing_balls_rnem",
    "clevrer": "data_pipelines.clevrer",
    "sketchy_video": "data_pipelines.sketchy_video",
}

SPLITS = ("train", "validation", "test")


def _module(name: str):
  if name not in DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r} (config field data.name). Known datasets: "
        f"{', '.join(sorted(DATASETS))}.")
  return importlib.import_module(DATASETS[name])


def dataset_config(name: str, *, preset: str = "", variant: str | None = None,
                   data_dir: str | None = None,
                   overrides: Sequence[str] = ()) -> Any:
  """A dataset's ``data`` config, as the command-line tools build it.

  The module's ``default_config()`` (or ``preset_config(preset)``), named
  ``name`` (modules serve several names), then ``variant``, ``data_dir``
  and ``field=value`` overrides (typed by the field, see
  `stream.apply_overrides`).
  """
  from data_pipelines import stream  # pylint: disable=g-import-not-at-top
  module = _module(name)
  if preset:
    if not hasattr(module, "preset_config"):
      raise ValueError(f"{name} has no presets.")
    config = module.preset_config(preset)
  else:
    config = module.default_config()
  config.name = name
  for key, value in (("variant", variant), ("data_dir", data_dir)):
    if value is not None:
      if key not in config:
        raise ValueError(f"{name} has no field data.{key}.")
      config[key] = value
  return stream.apply_overrides(config, overrides)


def _check_split(split: str, allowed=SPLITS) -> None:
  if split not in allowed:
    raise ValueError(f"Unknown split {split!r}; expected one of {allowed}.")


def process_shard(process_index: int | None, process_count: int | None):
  """Returns (process_index, process_count), defaulting to JAX's."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} outside [0, {process_count}).")
  return process_index, process_count


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """Returns a `tf.data.Dataset` of this process's batches (see module doc).

  Args:
    config: the ``data`` section of an experiment config.
    split: "train", "validation" or "test".
    batch_size: the global batch size; must divide by ``process_count``.
    seed: seed of the shuffling (and of procedural content where relevant).
    start_step: number of global batches already consumed (for resuming).
    process_index, process_count: default to ``jax.process_index()`` and
      ``jax.process_count()``.
    repeat: repeat forever; defaults to ``split == "train"``.
  """
  process_index, process_count = process_shard(process_index, process_count)
  if batch_size % process_count:
    raise ValueError(
        f"Global batch size {batch_size} does not divide by the number of "
        f"processes {process_count}.")
  if repeat is None:
    repeat = split == "train"
  ds = _module(config.name).get_dataset(
      config, split, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count, repeat=repeat)
  if config.get("frames_as_images", False):
    ds = _first_frames(ds)
  return ds


def _first_frames(ds):
  """A video stream as images: each clip's first frame (``data.
  frames_as_images``; set ``num_frames = 1``), for image models trained on a
  video dataset's frames (paper 004's IODINE baseline)."""
  from data_pipelines import stream  # pylint: disable=g-import-not-at-top

  def first(batch):
    out = {k: v for k, v in batch.items() if k not in ("video",
                                                       "segmentation")}
    out["image"] = batch["video"][:, 0]
    if "segmentation" in batch:
      out["segmentation"] = batch["segmentation"][:, 0]
    return out

  if isinstance(ds, stream.NumpyStream):
    return ds.map(first)
  context = getattr(ds, "_ocjax_context", "the dataset")
  ds = ds.map(first)
  ds._ocjax_context = context  # pylint: disable=protected-access
  return ds


def num_examples(config: Any, split: str) -> int:
  """Number of examples in a split."""
  return _module(config.name).num_examples(config, split)


def preprocessing_for(config: Any):
  """How to prepare a user's own image as this dataset's images were: the
  dataset module's ``user_preprocessing(config)``, else a centre crop to a
  square and a bilinear resize (`data_pipelines.preprocess`)."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  name = str(config.name)
  module = _module(name) if name in DATASETS else None
  if module is not None and hasattr(module, "user_preprocessing"):
    return module.user_preprocessing(config)
  note = "" if module is not None else (
      "no preprocessing known for this dataset; default: "
      f"{preprocess.square_text(int(config.image_size))} (bilinear)")
  return preprocess.square(config, note)


def iterate(ds):
  """NumPy batches of ``ds``; a corrupt or truncated file raises a
  `DatasetReadError` naming the dataset and file instead of a TensorFlow
  traceback."""
  from data_pipelines import stream  # pylint: disable=g-import-not-at-top
  return stream.iterate(ds)


def configure_tensorflow() -> None:
  """Keeps TensorFlow off accelerators and quiet (DESIGN.md); nothing to do
  where it is not installed (the procedural datasets need none)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised.
    pass
