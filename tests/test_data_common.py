"""Shared machinery of the real image datasets (data_pipelines/image_common)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from PIL import Image

from data_pipelines import image_common as ic
import test_data_utils as u


@pytest.mark.parametrize("n_in,n_out", [(640, 170), (480, 128), (192, 128),
                                        (196, 64), (35, 32), (100, 300)])
def test_pil_nearest_is_exact(n_in, n_out):
  a = np.tile(np.arange(n_in, dtype=np.int32)[None], (2, 1))
  want = np.asarray(Image.fromarray(a).resize((n_out, 2), Image.NEAREST))[0]
  np.testing.assert_array_equal(ic.pil_nearest_indices(n_in, n_out), want)


def test_torch_nearest():
  np.testing.assert_array_equal(ic.torch_nearest_indices(192, 128),
                                np.floor(np.arange(128) * 1.5))
  np.testing.assert_array_equal(ic.torch_nearest_indices(196, 64),
                                np.floor(np.arange(64) * 3.0625))
  np.testing.assert_array_equal(ic.torch_nearest_indices(64, 64),
                                np.arange(64))


def test_bilinear_matches_pil():
  yy, xx = np.mgrid[:196, :196]
  img = np.stack([np.sin(xx / 7.0) * 120 + 128, np.cos(yy / 5.0) * 120 + 128,
                  (xx * yy) % 256], -1).astype(np.uint8)
  got = ic.resize_bilinear_uint8(img, (64, 64)).numpy()
  want = np.asarray(Image.fromarray(img).resize((64, 64), Image.BILINEAR))
  assert np.abs(got - want).max() <= 1.0
  assert np.mean(got != want) < 0.05


def _stream(n, g, p, count, repeat, start=0):
  t = ic.tf()
  ds = ic.positions(num_examples=n, batch_size=g, start_step=start,
                    process_index=p, process_count=count, repeat=repeat)
  ds = ds.map(lambda x: ic.position_to_index(x, num_examples=n, seed=7,
                                             shuffle=repeat))
  if repeat:
    ds = ds.take(3 * n)
  out = list(ds.as_numpy_iterator())
  del t
  return [int(i) for i, _ in out], [bool(v) for _, v in out]


def test_index_stream():
  n, g = 10, 4
  # Evaluation: in order, padded to whole global batches.
  idx, valid = _stream(n, g, 0, 1, repeat=False)
  assert idx == list(range(10)) + [0, 0] and valid == [True] * 10 + [False] * 2
  # Two processes: contiguous halves of each global batch.
  halves = [_stream(n, g, p, 2, repeat=False) for p in range(2)]
  joined = []
  for b in range(3):
    joined += halves[0][0][2 * b:2 * b + 2] + halves[1][0][2 * b:2 * b + 2]
  assert joined == idx
  # Training: every epoch a permutation, a different one each epoch.
  idx, _ = _stream(n, g, 0, 1, repeat=True)
  epochs = [idx[i * n:(i + 1) * n] for i in range(3)]
  assert all(sorted(e) == list(range(n)) for e in epochs)
  assert epochs[0] != epochs[1]
  # Resume: start_step s is the stream after s global batches.
  resumed, _ = _stream(n, g, 0, 1, repeat=True, start=3)
  assert resumed[:12] == idx[12:24]


def test_split_groups():
  groups = [f"scene-{i:04d}" for i in range(25)]
  s = ic.split_groups(groups, seed=None)
  assert s["validation"] == groups[:2] and s["test"] == groups[2:4]
  assert s["train"] == groups[4:]
  seeded = ic.split_groups(list(reversed(groups)), seed=0)
  order = sorted(groups)
  random.Random(0).shuffle(order)
  assert seeded["validation"] == order[:2]
  assert seeded["train"] == order[4:]
  assert sorted(sum(seeded.values(), [])) == groups


def test_tfrecord_index(tmp_path):
  path = str(tmp_path / "ep")
  records = [bytes([i]) * (i * 37 + 1) for i in range(6)]
  u.write_tfrecord(path, records)
  offsets, lengths = ic.tfrecord_index(path)
  size = os.path.getsize(path)
  for i, rec in enumerate(records):
    got = ic.read_record(path, int(offsets[i]), int(lengths[i]), size)
    assert got.numpy() == rec
  with open(path, "r+b") as f:
    f.truncate(size - 3)
  with pytest.raises(ic.DatasetFormatError, match="truncated"):
    ic.tfrecord_index(path)


def test_iterate_names_the_source():
  t = ic.tf()
  ds = t.data.Dataset.from_tensors(t.constant(b"not a png")).map(
      lambda c: {"x": t.io.decode_png(c)})
  ds = ic.attach_context(ds, "MyData from /some/where")
  with pytest.raises(ic.DatasetReadError, match="MyData from /some/where"):
    list(ic.iterate(ds))
