"""Writers of tiny datasets in their published formats, and shared checks.

Used by the tests/test_data_*.py files; holds no tests itself.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

import data_pipelines
from data_pipelines import stream


def tf():
  return stream.tf()


# ---------------------------------------------------------------- writers


_BYTE = [bytes([i]) for i in range(256)]


def bytes_feature_per_element(a: np.ndarray):
  """A BytesList with one 1-byte string per element (DeepMind's encoding)."""
  t = tf()
  values = np.asarray(a, np.uint8).reshape(-1).tolist()
  return t.train.Feature(bytes_list=t.train.BytesList(
      value=[_BYTE[v] for v in values]))


def float_feature(a: np.ndarray):
  t = tf()
  return t.train.Feature(float_list=t.train.FloatList(
      value=np.asarray(a, np.float32).reshape(-1).tolist()))


def bytes_feature(values):
  t = tf()
  return t.train.Feature(bytes_list=t.train.BytesList(value=list(values)))


def example(features) -> bytes:
  t = tf()
  return t.train.Example(features=t.train.Features(
      feature=features)).SerializeToString()


def write_tfrecord(path: str, records, compression: str | None = None):
  t = tf()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opts = t.io.TFRecordOptions(compression_type=compression or "")
  with t.io.TFRecordWriter(path, opts) as w:
    for r in records:
      w.write(r)


def multi_object_scene(rng, v, index: int, visible: int | None = None):
  """A scene of a multi-object variant: image, masks [N, H, W] 0/255.

  Entity ``e`` covers a distinct horizontal band of rows; the pixel at
  (0, 0) encodes the scene index in the red channel, so tests can find it.
  With ``visible``, only the first ``visible`` entities have non-empty masks
  (the others' pixels go to entity 0).
  """
  h, w = v.image_size
  n = v.max_entities
  owner = np.zeros((h, w), np.int64)  # Entity owning each pixel.
  bands = np.array_split(np.arange(h), n)
  for e, rows in enumerate(bands):
    owner[rows] = e
  # Random object placement on top, so labels are not all bands.
  for e in range(1, n):
    if rng.random() < 0.5:
      y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
      owner[y:y + 3, x:x + 3] = e
  if visible is not None:
    owner[owner >= visible] = 0
  masks = np.stack([(owner == e) * 255 for e in range(n)]).astype(np.uint8)
  image = rng.integers(0, 256, (h, w, v.channels)).astype(np.uint8)
  image[0, 0, 0] = index % 256
  return image, masks


def multi_object_record(rng, v, index: int, visible: int | None = None
                        ) -> tuple[bytes, np.ndarray, np.ndarray]:
  image, masks = multi_object_scene(rng, v, index, visible)
  stored = np.transpose(masks, (1, 2, 0)) if v.masks_last else masks
  feats = {"image": bytes_feature_per_element(image),
           "mask": bytes_feature_per_element(stored[..., None])}
  for name, shape, dtype in v.extra:
    if dtype == "bytes":
      feats[name] = bytes_feature_per_element(
          rng.integers(0, 8, shape).astype(np.uint8))
    else:
      feats[name] = float_feature(rng.random(shape))
  return example(feats), image, masks


def write_multi_object(data_dir: str, name: str, variant: str, n: int,
                       seed: int = 0, flat: bool = False, visible=None):
  """Writes ``n`` records of a published file; returns (path, images, masks).

  ``visible[i]``: entities of record ``i`` with a non-empty mask (all when
  None).
  """
  from data_pipelines import multi_object  # pylint: disable=g-import-not-at-top
  v = multi_object.VARIANTS[(name, variant)]
  rng = np.random.default_rng(seed)
  records, images, masks = [], [], []
  for i in range(n):
    r, im, m = multi_object_record(rng, v, i,
                                   None if visible is None else visible[i])
    records.append(r)
    images.append(im)
    masks.append(m)
  path = (os.path.join(data_dir, v.filename) if flat else
          os.path.join(data_dir, v.subdir, v.filename))
  write_tfrecord(path, records, "GZIP")
  return path, np.stack(images), np.stack(masks)


def png_bytes(array: np.ndarray, mode: str | None = None,
              palette: bool = False) -> bytes:
  img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
  if palette:
    img = Image.fromarray(array.astype(np.uint8), "P")
    pal = np.random.default_rng(1).integers(0, 256, 768).astype(np.uint8)
    img.putpalette(pal.tolist())
  b = io.BytesIO()
  img.save(b, "PNG")
  return b.getvalue()


def write_png(path: str, array: np.ndarray, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(png_bytes(array, **kw))


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
  b = io.BytesIO()
  Image.fromarray(array).save(b, "JPEG", quality=quality)
  return b.getvalue()


# ----------------------------------------------------------------- checks


def batches(config, split, *, batch_size, seed=0, start_step=0,
            process_index=0, process_count=1, repeat=None, num=None):
  """The first ``num`` batches (all when finite and ``num`` is None)."""
  ds = data_pipelines.get_dataset(
      config, split, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      repeat=repeat)
  out = []
  for b in stream.iterate(ds):
    out.append(b)
    if num is not None and len(out) >= num:
      break
  return out


def check_contract(batch, *, batch_size, size, has_seg=True, valid=None):
  assert batch["image"].dtype == np.float32
  assert batch["image"].shape == (batch_size, size, size, 3)
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
  if has_seg:
    assert batch["segmentation"].dtype == np.int32
    assert batch["segmentation"].shape == (batch_size, size, size)
    assert batch["segmentation"].min() >= 0
  else:
    assert "segmentation" not in batch
  if valid is not None:
    assert ("valid" in batch) == valid


def check_sharding(config, split, *, batch_size, steps, repeat, seed=0):
  """Two processes: disjoint halves whose union is the 1-process batch."""
  one = batches(config, split, batch_size=batch_size, seed=seed,
                repeat=repeat, num=steps)
  halves = [batches(config, split, batch_size=batch_size, seed=seed,
                    process_index=p, process_count=2, repeat=repeat,
                    num=steps) for p in range(2)]
  assert len(halves[0]) == len(halves[1]) == len(one)
  for s, full in enumerate(one):
    for key in full:
      joined = np.concatenate([halves[0][s][key], halves[1][s][key]])
      np.testing.assert_array_equal(joined, full[key], err_msg=key)
  return one


def check_resume(config, split, *, batch_size, start_step, repeat, seed=0):
  """Starting at ``start_step`` yields the stream after that many batches."""
  full = batches(config, split, batch_size=batch_size, seed=seed,
                 repeat=repeat, num=start_step + 2)
  resumed = batches(config, split, batch_size=batch_size, seed=seed,
                    start_step=start_step, repeat=repeat, num=2)
  for a, b in zip(full[start_step:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert len(resumed) == len(full[start_step:])


def ids_of(batches_, key="image"):
  """The red value at (0, 0) of each valid row (the writers' scene tag)."""
  out = []
  for b in batches_:
    rows = b[key][:, 0, 0, 0]
    if "valid" in b:
      rows = rows[b["valid"]]
    out.extend(np.round(rows * 255).astype(int).tolist())
  return out
