"""DeepMind multi-object datasets, read from the published TFRecord files.

Objects Room, CLEVR (with masks), Multi-dSprites and Tetrominoes
(github.com/deepmind/multi_object_datasets) are each one GZIP-compressed
TFRecord file of ``tf.train.Example``s whose byte features hold one byte per
element (``image`` ``[H, W, C]``; ``mask`` 0/255 ``[N, H, W, 1]``, stored
``[H, W, N, 1]`` for Multi-dSprites). They are parsed here with ``tf.io``
(the upstream readers use TF1 names that no longer exist).

The GENESIS protocol (``datasets/multi_object_config.py`` of the GENESIS
code; paper 002 App. D "the same preprocessing as Engelcke et al."):

* splits: test = the first ``num_test`` (10,000) records, validation = the
  next ``num_validation`` (10,000), train = the rest of the file;
* ground truth: the first ``background_entities`` entities (Objects Room: 4,
  sky, floor and two wall halves; others: 1) become label 0 and the i-th
  remaining entity label i + 1 (a later entity wins where masks overlap, as
  in GENESIS's loop). GENESIS numbers them by entity index instead; the
  labelling differs by a constant offset, which no metric sees;
* CLEVR is centre-cropped to 192 x 192 (IODINE's crop) and resized to 128;
  GENESIS resizes images and masks with ``F.interpolate``'s default
  nearest-neighbour rule, reproduced exactly (``resize_method``).

CLEVR6 (IODINE, Slot Attention: CLEVR with masks restricted to scenes with
at most 6 objects, 3-6 in practice): ``max_objects = 6``. A scene's objects
are its foreground entities (those after the ``background_entities``) whose
mask in the published file (before any crop) is non-empty; records with more
than ``max_objects`` are dropped before anything else, so the splits above
count the kept records: test = the first ``num_test`` kept records of the
file, validation = the next ``num_validation`` kept records, train = all
the remaining kept records, and ``num_examples``, the shuffled training
stream, ``start_step`` and the padding of evaluation streams all refer to
kept records. The train split's size (and a test set's) needs one pass over
the file to count the kept records, once per process (logged; set
``num_records`` to that count to skip the pass); test and validation do not.

Streaming: a GZIP file can only be read front to back. Each epoch of a
training stream reads the split's records in file order through a shuffle
buffer of ``shuffle_buffer`` records (GENESIS: 128 x 32 = 4096) seeded by
``(seed, epoch)``. Every process reads the whole file and parses only the
rows of its slice of each global batch. Resuming at ``start_step`` starts at
the right epoch and skips ``(start_step * G) mod N`` raw records of it
through the shuffle buffer before parsing anything: exact, at a cost of at
most one epoch of decompression (about 4 minutes for Objects Room's 1M
records on one core), never a replay of earlier epochs. With
``max_objects`` every record's masks are parsed (in parallel) to filter it,
and the kept ones again to make the example.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import image_common as ic
from data_pipelines import stream

WHERE = ("https://github.com/deepmind/multi_object_datasets (files at "
         "gs://multi-object-datasets/, e.g. `gsutil cp -r "
         "gs://multi-object-datasets DIR` or https://storage.googleapis.com/"
         "multi-object-datasets/<dataset>/<file>)")


@dataclasses.dataclass(frozen=True)
class _Variant:
  """The published format of one file."""
  subdir: str
  filename: str
  image_size: tuple[int, int]
  channels: int
  max_entities: int
  masks_last: bool  # Multi-dSprites stores masks [H, W, N, 1].
  extra: tuple[tuple[str, tuple[int, ...], str], ...]  # name, shape, dtype.
  published_records: int | None  # None: count the file.
  test_only: bool = False


def _dsprites_extra(n, c):
  return (("x", (n,), "float"), ("y", (n,), "float"),
          ("shape", (n,), "float"), ("color", (n, c), "float"),
          ("visibility", (n,), "float"), ("orientation", (n,), "float"),
          ("scale", (n,), "float"))


_TETRO_EXTRA = (("x", (4,), "float"), ("y", (4,), "float"),
                ("shape", (4,), "float"), ("color", (4, 3), "float"),
                ("visibility", (4,), "float"))
_CLEVR_EXTRA = (("x", (11,), "float"), ("y", (11,), "float"),
                ("z", (11,), "float"), ("pixel_coords", (11, 3), "float"),
                ("rotation", (11,), "float"), ("size", (11,), "bytes"),
                ("material", (11,), "bytes"), ("shape", (11,), "bytes"),
                ("color", (11,), "bytes"), ("visibility", (11,), "float"))

# (dataset, variant) -> published format. Record counts from the upstream
# README (1M scenes each; CLEVR with masks 100k).
VARIANTS: dict[tuple[str, str], _Variant] = {
    ("objects_room", "train"): _Variant(
        "objects_room", "objects_room_train.tfrecords", (64, 64), 3, 7,
        False, (), 1_000_000),
    ("objects_room", "six_objects"): _Variant(
        "objects_room", "objects_room_test_six_objects.tfrecords", (64, 64),
        3, 10, False, (), None, test_only=True),
    ("objects_room", "empty_room"): _Variant(
        "objects_room", "objects_room_test_empty_room.tfrecords", (64, 64),
        3, 4, False, (), None, test_only=True),
    ("objects_room", "identical_color"): _Variant(
        "objects_room", "objects_room_test_identical_color.tfrecords",
        (64, 64), 3, 10, False, (), None, test_only=True),
    ("clevr_with_masks", "train"): _Variant(
        "clevr_with_masks", "clevr_with_masks_train.tfrecords", (240, 320), 3,
        11, False, _CLEVR_EXTRA, 100_000),
    ("multi_dsprites", "colored_on_colored"): _Variant(
        "multi_dsprites", "multi_dsprites_colored_on_colored.tfrecords",
        (64, 64), 3, 5, True, _dsprites_extra(5, 3), 1_000_000),
    ("multi_dsprites", "colored_on_grayscale"): _Variant(
        "multi_dsprites", "multi_dsprites_colored_on_grayscale.tfrecords",
        (64, 64), 3, 6, True, _dsprites_extra(6, 3), 1_000_000),
    ("multi_dsprites", "binarized"): _Variant(
        "multi_dsprites", "multi_dsprites_binarized.tfrecords", (64, 64), 1,
        4, True, _dsprites_extra(4, 1), 1_000_000),
    ("tetrominoes", "train"): _Variant(
        "tetrominoes", "tetrominoes_train.tfrecords", (35, 35), 3, 4, False,
        _TETRO_EXTRA, 1_000_000),
}
DEFAULT_VARIANT = {"objects_room": "train", "clevr_with_masks": "train",
                   "multi_dsprites": "colored_on_colored",
                   "tetrominoes": "train"}
# GENESIS's preprocessing per dataset: background entities, crop, image size.
BACKGROUND_ENTITIES = {"objects_room": 4, "clevr_with_masks": 1,
                       "multi_dsprites": 1, "tetrominoes": 1}
GENESIS_CROP = {"clevr_with_masks": 192}
GENESIS_IMAGE_SIZE = {"objects_room": 64, "clevr_with_masks": 128,
                      "multi_dsprites": 64, "tetrominoes": 32}


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section for these datasets (GENESIS's protocol)."""
  c = ml_collections.ConfigDict()
  c.name = "objects_room"  # objects_room, clevr_with_masks, multi_dsprites,
  #                          tetrominoes.
  # Folder holding the published files: either the bucket copy
  # (DIR/objects_room/objects_room_train.tfrecords) or the file's folder.
  c.data_dir = ""
  # "" = the file GENESIS trains on: objects_room "train" (or the test sets
  # "six_objects", "empty_room", "identical_color"); multi_dsprites
  # "colored_on_colored" (or "colored_on_grayscale", "binarized").
  c.variant = ""
  # Output height = width. GENESIS: objects_room 64, multi_dsprites 64,
  # clevr_with_masks 128, tetrominoes 32.
  c.image_size = 64
  # Centre crop before resizing; -1 = GENESIS's (192 for CLEVR, else none),
  # 0 = none.
  c.crop_size = -1
  # "nearest_torch" = GENESIS's F.interpolate; or "bilinear", "nearest_pil".
  c.resize_method = "nearest_torch"
  # Leading entities that become background (label 0); -1 = GENESIS's
  # (objects_room 4, others 1).
  c.background_entities = -1
  # GENESIS splits: test = first num_test records, validation = next
  # num_validation, train = the rest.
  c.num_test = 10_000
  c.num_validation = 10_000
  # Keep only scenes with at most this many objects (foreground entities
  # with a non-empty mask); -1 = all. CLEVR6 (IODINE, Slot Attention): 6.
  # The splits then count kept records (see the module doc).
  c.max_objects = -1
  # Records in the file (with max_objects: the kept records); -1 = the
  # published count, or counted by one pass over the file for the small
  # Objects Room test files and for files filtered by max_objects. A wrong
  # value stops the stream with an error.
  c.num_records = -1
  # Shuffle buffer of the training stream, in records (GENESIS: 128 * 32).
  c.shuffle_buffer = 4096
  c.read_buffer_bytes = 2 * 1024 * 1024
  # Segmentation metrics: GENESIS-V2 reports ARI-FG / MSC-FG here.
  c.metrics_include_background = False
  # tf.data: parallel decoding calls (and private threads), prefetched
  # batches.
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


# --------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class _Setup:
  name: str
  variant_name: str
  variant: _Variant
  path: str
  image_size: int
  crop: int  # 0 = none.
  resize_method: str
  background: int
  max_objects: int  # -1 = no filter.
  num_records: int | None  # None: filtered and not counted yet.
  num_test: int
  num_validation: int
  shuffle_buffer: int
  read_buffer_bytes: int
  options: stream.StreamOptions


def _expected_layout(name: str) -> str:
  files = [v for (n, _), v in VARIANTS.items() if n == name]
  lines = [f"  DIR/{v.subdir}/{v.filename}   (or DIR/{v.filename})"
           for v in files]
  return "\n".join(lines)


def _find_file(data_dir: str, v: _Variant) -> str | None:
  if os.path.isfile(data_dir):
    return data_dir
  for p in (os.path.join(data_dir, v.subdir, v.filename),
            os.path.join(data_dir, v.filename)):
    if os.path.isfile(p):
      return p
  return None


_COUNTS: dict[tuple[Any, ...], int] = {}


def _count_records(path: str, v: _Variant | None = None, background: int = 0,
                   max_objects: int = -1, calls: int = 1) -> int:
  """Counts the records of a GZIP TFRecord file (cached per process).

  With ``max_objects >= 0`` only the records with at most that many objects
  (`num_objects`) count; ``calls`` records are parsed in parallel.
  """
  tf = stream.tf()
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_size, st.st_mtime)
  if max_objects >= 0:
    key += (v, background, max_objects)
  if key not in _COUNTS:
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP")
    if max_objects >= 0:
      kept = stream.graph_fn(
          lambda r: tf.cast(_keep(r, v, background, max_objects), tf.int64))
      ds = ds.map(kept, num_parallel_calls=calls, deterministic=True)
      count = lambda c, k: c + k
    else:
      count = lambda c, _: c + 1
    try:
      n = int(ds.reduce(np.int64(0), stream.graph_fn(count)).numpy())
    except tf.errors.OpError as e:
      raise stream.DatasetFormatError(
          f"{path}: not a complete GZIP-compressed TFRecord file (truncated "
          f"or corrupt download?). TensorFlow said: {stream.tf_message(e)}\n"
          f"Get it again from "
          f"{WHERE}") from None
    if max_objects >= 0:
      logging.getLogger(__name__).info(
          "%s: %d records with at most %d objects (set data.num_records=%d "
          "to skip this count).", path, n, max_objects, n)
    _COUNTS[key] = n
  return _COUNTS[key]


def _setup(config: Any) -> _Setup:
  cfg = stream.resolve(config, default_config())
  name = cfg.name
  if name not in DEFAULT_VARIANT:
    raise ValueError(f"multi_object does not provide data.name={name!r}; "
                     f"expected one of {tuple(DEFAULT_VARIANT)}.")
  variant_name = cfg.variant or DEFAULT_VARIANT[name]
  if (name, variant_name) not in VARIANTS:
    known = [v for (n, v) in VARIANTS if n == name]
    raise ValueError(f"data.variant={variant_name!r} is unknown for {name}; "
                     f"expected one of {known} (or '' for "
                     f"{DEFAULT_VARIANT[name]!r}).")
  v = VARIANTS[(name, variant_name)]
  what = f"{name} ({variant_name})"
  data_dir = ic.require_data_dir(cfg, what=what,
                                 expected=_expected_layout(name), where=WHERE)
  path = _find_file(data_dir, v)
  if path is None:
    raise stream.DatasetNotFoundError(
        f"{what}: file {v.filename!r} not found in {data_dir!r} (looked for "
        f"{os.path.join(data_dir, v.subdir, v.filename)!r} and "
        f"{os.path.join(data_dir, v.filename)!r}).\nExpected layout:\n"
        f"{_expected_layout(name)}\nGet it from: {WHERE}")
  image_size = stream.check_int(cfg.image_size, "image_size", 1)
  crop = cfg.crop_size
  if crop == -1:
    crop = GENESIS_CROP.get(name, 0)
  crop = stream.check_int(crop, "crop_size", 0)
  h, w = v.image_size
  if crop > min(h, w):
    raise ValueError(f"data.crop_size={crop} exceeds the {h}x{w} images of "
                     f"{name}.")
  if not crop and h != w:
    raise ValueError(f"{name} images are {h}x{w}; set data.crop_size to "
                     "crop them square (GENESIS: 192).")
  method = stream.check_choice(cfg.resize_method, "resize_method",
                               ic.RESIZE_METHODS)
  background = cfg.background_entities
  if background == -1:
    background = BACKGROUND_ENTITIES[name]
  background = stream.check_int(background, "background_entities", 0)
  if background > v.max_entities:
    raise ValueError(f"data.background_entities={background} exceeds the "
                     f"{v.max_entities} entities of {what}.")
  max_objects = stream.check_int(cfg.max_objects, "max_objects", -1)
  num_records = cfg.num_records
  if num_records == -1 and max_objects < 0:
    num_records = (v.published_records if v.published_records is not None
                   else _count_records(path))
  if num_records != -1 or max_objects < 0:
    num_records = stream.check_int(num_records, "num_records", 1)
  else:
    num_records = None  # Counted when needed (`_num_records`).
  return _Setup(
      name=name, variant_name=variant_name, variant=v, path=path,
      image_size=image_size, crop=crop, resize_method=method,
      background=background, max_objects=max_objects,
      num_records=num_records,
      num_test=stream.check_int(cfg.num_test, "num_test", 0),
      num_validation=stream.check_int(cfg.num_validation, "num_validation",
                                      0),
      shuffle_buffer=stream.check_int(cfg.shuffle_buffer, "shuffle_buffer",
                                      1),
      read_buffer_bytes=stream.check_int(cfg.read_buffer_bytes,
                                         "read_buffer_bytes", 1),
      options=stream.stream_options(cfg))


def _num_records(s: _Setup) -> int:
  """Records in the file, after the ``max_objects`` filter."""
  if s.num_records is not None:
    return s.num_records
  return _count_records(s.path, s.variant, s.background, s.max_objects,
                        s.options.num_parallel_calls)


def _split_range(s: _Setup, split: str) -> tuple[int, int]:
  """(first record, number of records) of a split, among the kept records."""
  if s.variant.test_only:
    if split != "test":
      raise ValueError(
          f"{s.name} variant {s.variant_name!r} is a test set; only split "
          "'test' exists (the whole file).")
    return 0, _num_records(s)
  nt, nv = s.num_test, s.num_validation
  # Test and validation need no count of a filtered file: its stream checks
  # that the file holds them.
  n = _num_records(s) if split == "train" else s.num_records
  if split == "test":
    start, count = 0, nt
  elif split == "validation":
    start, count = nt, nv
  else:
    start, count = nt + nv, n - nt - nv
  if count < 1 or (n is not None and start + count > n):
    kept = (f" with at most {s.max_objects} objects (data.max_objects)"
            if s.max_objects >= 0 else "")
    has = ("" if n is None else
           f"the file has {n} records{kept} (data.num_records) and ")
    raise ValueError(
        f"{s.name}: split {split!r} is empty: {has}the first {nt} are test, "
        f"the next {nv} validation (data.num_test, data.num_validation).")
  return start, count


def num_examples(config: Any, split: str) -> int:
  stream.split_id(split)
  return _split_range(_setup(config), split)[1]


# --------------------------------------------------------------- parsing


def feature_spec(v: _Variant, full: bool = True):
  """The published ``tf.io`` feature spec (``full``: with the factors)."""
  tf = stream.tf()
  h, w = v.image_size
  mask_shape = ([h, w, v.max_entities, 1] if v.masks_last
                else [v.max_entities, h, w, 1])
  spec = {"image": tf.io.FixedLenFeature([h, w, v.channels], tf.string),
          "mask": tf.io.FixedLenFeature(mask_shape, tf.string)}
  if full:
    for name, shape, dtype in v.extra:
      spec[name] = tf.io.FixedLenFeature(
          list(shape), tf.string if dtype == "bytes" else tf.float32)
  return spec


def _decode_mask(mask, v: _Variant):
  """Parsed ``mask`` feature -> uint8 ``[N, H, W]`` (0/255)."""
  tf = stream.tf()
  mask = tf.squeeze(tf.io.decode_raw(mask, tf.uint8), -1)
  if v.masks_last:
    mask = tf.transpose(mask, [2, 0, 1, 3])
  return mask[..., 0]


def _decode(record, v: _Variant, full: bool = False):
  """Raw record -> dict with uint8 ``image`` [H, W, C], ``mask`` [N, H, W]."""
  tf = stream.tf()
  ex = tf.io.parse_single_example(record, feature_spec(v, full))
  ex["image"] = tf.squeeze(tf.io.decode_raw(ex["image"], tf.uint8), -1)
  ex["mask"] = _decode_mask(ex["mask"], v)
  return ex


def num_objects(record, v: _Variant, background: int):
  """Objects of a raw record (graph code): int32 count of the foreground
  entities (index >= ``background``) whose published mask is non-empty."""
  tf = stream.tf()
  spec = {"mask": feature_spec(v, full=False)["mask"]}
  mask = _decode_mask(tf.io.parse_single_example(record, spec)["mask"], v)
  visible = tf.reduce_any(tf.equal(mask[background:], 255), axis=[1, 2])
  return tf.reduce_sum(tf.cast(visible, tf.int32))


def _keep(record, v: _Variant, background: int, max_objects: int):
  """Whether the ``max_objects`` filter keeps a raw record (graph code)."""
  return num_objects(record, v, background) <= max_objects


def labels_from_masks(mask, background: int):
  """``[N, H, W]`` 0/255 masks -> int32 ``[H, W]`` (entity i>=bg: i-bg+1)."""
  tf = stream.tf()
  n = mask.shape[0]
  labels = np.maximum(np.arange(n) - background + 1, 0).astype(np.int32)
  on = tf.cast(tf.equal(mask, 255), tf.int32)  # [N, H, W]
  # Labels grow with the entity index, so the max is the last entity drawn.
  return tf.reduce_max(on * labels[:, None, None], axis=0)


def _preprocess(s: _Setup, record):
  """Raw record -> (image float32 [S, S, 3] in [0, 1], seg int32 [S, S])."""
  tf = stream.tf()
  v = s.variant
  ex = _decode(record, v)
  image, seg = ex["image"], labels_from_masks(ex["mask"], s.background)
  if v.channels == 1:
    image = tf.tile(image, [1, 1, 3])
  h, w = v.image_size
  if s.crop:
    y, x = ic.center_crop_offsets(h, w, s.crop, s.crop)
    image = image[y:y + s.crop, x:x + s.crop]
    seg = seg[y:y + s.crop, x:x + s.crop]
    h = w = s.crop
  size = (s.image_size, s.image_size)
  image = ic.resize_image(image, size, (h, w), s.resize_method)
  if (h, w) != size:
    # Labels always nearest; GENESIS interpolates them like the images.
    conv = "pil" if s.resize_method == "nearest_pil" else "torch"
    seg = ic.resize_nearest(seg, size, (h, w), conv)
  image = tf.ensure_shape(ic.to_unit(image), size + (3,))
  seg = tf.ensure_shape(seg, size)
  return image, seg


def _check_first_record(s: _Setup) -> None:
  """Parses record 0 with the full published spec; clear error if not."""
  tf = stream.tf()
  ds = tf.data.TFRecordDataset(s.path, compression_type="GZIP")
  what = f"{s.name} ({s.variant_name})"
  try:
    record = next(iter(ds.take(1)), None)
  except tf.errors.OpError as e:
    raise stream.DatasetFormatError(
        f"{s.path}: cannot be read as a GZIP-compressed TFRecord file "
        f"({stream.tf_message(e)}). Expected the "
        f"published {what} file from {WHERE}") from None
  if record is None:
    raise stream.DatasetFormatError(f"{s.path}: the file holds no records.")
  try:
    _decode(record, s.variant, full=True)
  except (tf.errors.OpError, ValueError) as e:
    spec = {k: (list(f.shape), f.dtype.name)
            for k, f in feature_spec(s.variant).items()}
    raise stream.DatasetFormatError(
        f"{s.path}: record 0 is not a {what} example. Expected the "
        f"published features {spec} (byte features: one byte per element). "
        f"Wrong file or data.variant? TensorFlow said: "
        f"{stream.tf_message(e)}") from None


# --------------------------------------------------------------- streams


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1, repeat: bool = False):
  """This process's batches: ``image`` [b, S, S, 3], ``segmentation`` [b, S, S].

  Without ``repeat`` also ``valid`` [b] (padding rows are zeros).
  """
  process_index, process_count, local = stream.check_stream_args(
      split, batch_size, start_step, process_index, process_count)
  s = _setup(config)
  start, count = _split_range(s, split)
  _check_first_record(s)
  tf = stream.tf()
  calls = s.options.num_parallel_calls
  g = batch_size
  path, buf = s.path, s.read_buffer_bytes
  v, background, max_objects = s.variant, s.background, s.max_objects

  def records():  # The split's raw records, in file order.
    raw = tf.data.TFRecordDataset(path, compression_type="GZIP",
                                  buffer_size=buf)
    if max_objects >= 0:  # Parse in parallel, then keep in order.
      with_keep = stream.graph_fn(
          lambda r: (r, _keep(r, v, background, max_objects)))
      raw = raw.map(with_keep, num_parallel_calls=calls, deterministic=True)
      raw = raw.filter(stream.graph_fn(lambda r, keep: keep))
      raw = raw.map(stream.graph_fn(lambda r, keep: r))
    raw = raw.skip(start).take(count)
    return raw.apply(tf.data.experimental.assert_cardinality(count))

  seed_word = stream.seed_word(seed, bits=62)
  if repeat:
    first_epoch, within = divmod(start_step * g, count)

    def epoch(e):
      ds = records()
      if s.shuffle_buffer > 1:
        ds = ds.shuffle(s.shuffle_buffer,
                        seed=(seed_word % (1 << 40)) * (1 << 20) + e,
                        reshuffle_each_iteration=False)
      return ds

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    ds = ds.flat_map(stream.graph_fn(epoch)).skip(within)
    ds = ds.map(stream.graph_fn(lambda r: (r, tf.constant(True))))
    offset = start_step * g
  else:
    total = math.ceil(count / g) * g
    ds = records().map(stream.graph_fn(lambda r: (r, tf.constant(True))))
    pad = tf.data.Dataset.from_tensors(
        (tf.constant(b""), tf.constant(False))).repeat(total - count)
    offset = min(start_step * g, total)
    ds = ds.concatenate(pad).skip(offset)

  # Keep this process's rows of every global batch (positions from offset).
  lo, hi = process_index * local, (process_index + 1) * local
  ds = ds.enumerate(start=offset).filter(stream.graph_fn(
      lambda i, x: tf.logical_and(i % g >= lo, i % g < hi)))
  size = (s.image_size, s.image_size)

  def example(i, x):
    del i
    record, valid = x
    if repeat:
      image, seg = _preprocess(s, record)
      return {"image": image, "segmentation": seg}
    image, seg = tf.cond(
        valid, lambda: _preprocess(s, record),
        lambda: (tf.zeros(size + (3,), tf.float32), tf.zeros(size, tf.int32)))
    return {"image": image, "segmentation": seg, "valid": valid}

  ds = ds.map(stream.graph_fn(example), num_parallel_calls=calls,
              deterministic=True)
  kept = (f" among those with at most {max_objects} objects"
          if max_objects >= 0 else "")
  context = (f"{s.name} ({s.variant_name}) split {split!r} from {s.path} "
             f"(records {start}..{start + count - 1}{kept})")
  return stream.finish(ds, local_batch=local, config=config, context=context)


def user_preprocessing(config: Any):
  """The dataset's crop as a fraction of the shorter side, then its resize."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  name = str(config.name)
  variant = config.get("variant", "") or DEFAULT_VARIANT[name]
  raw = VARIANTS.get((name, variant),
                     VARIANTS[(name, DEFAULT_VARIANT[name])]).image_size
  crop = int(config.get("crop_size", -1))
  if crop == -1:
    crop = GENESIS_CROP.get(name, 0)
  method = str(config.get("resize_method", "nearest_torch"))
  if not crop:
    size = int(config.image_size)
    return preprocess.Preprocess(size, 1.0, method, (
        f"{name}: {preprocess.square_text(size)} ({method})"))
  return preprocess.fraction_crop(config, crop / min(raw), method,
                                  f"{crop} of {raw[0]}x{raw[1]}")
