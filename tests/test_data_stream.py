"""The stream engine (data_pipelines/stream): configs, seeds, index streams,
tf.data builders, errors and TFRecord access shared by every dataset."""

from __future__ import annotations

import os
import random

import ml_collections
import numpy as np
import pytest

from data_pipelines import bouncing_balls
from data_pipelines import stream
import test_data_utils as u


def test_field_with_default_or_required():
  c = ml_collections.ConfigDict({"name": "x", "a": 3})
  assert stream.field(c, "a") == 3 and stream.field(c, "a", 5) == 3
  assert stream.field(c, "b", 5) == 5 and stream.field(None, "b", 5) == 5
  assert stream.field(c, "b", None) is None  # None is a valid default.
  with pytest.raises(ValueError, match=r"data\.b is missing \(dataset 'x'\)"):
    stream.field(c, "b")
  r = stream.resolve(c, {"a": 1, "b": 2})
  assert (r.a, r.b) == (3, 2)


def test_validators_name_the_field():
  c = ml_collections.ConfigDict({"n": 0, "f": 1.5, "r": (3, 1), "s": "x",
                                 "t": True})
  assert stream.int_field(c, "n", 0) == 0
  with pytest.raises(ValueError, match=r"data\.n=0 is invalid.*>= 1"):
    stream.int_field(c, "n")
  with pytest.raises(ValueError, match=r"data\.t=True is invalid"):
    stream.check_int(c.t, "t", 0)  # Not a bool.
  assert stream.int_field(c, "m", 1, default=4) == 4
  assert stream.float_field(c, "f", 0, 2) == 1.5
  with pytest.raises(ValueError, match=r"data\.f=1\.5 .*\[0, 1\.0\]"):
    stream.float_field(c, "f", 0, 1.0)
  with pytest.raises(ValueError, match=r"data\.r=\(3, 1\).*min <= max"):
    stream.int_range(c, "r")
  with pytest.raises(ValueError, match=r"data\.r=\(3, 1\).*min <= max"):
    stream.float_range(c, "r")
  assert stream.float_range(ml_collections.ConfigDict({"r": (-1, 2)}),
                            "r") == (-1.0, 2.0)
  with pytest.raises(ValueError, match=r"0\.0 <= min"):
    stream.float_range(ml_collections.ConfigDict({"r": (-1, 2)}), "r", 0.0)
  with pytest.raises(ValueError, match=r"data\.s='x' is unknown.*\('a', 'b'\)"):
    stream.check_choice(c.s, "s", ["a", "b"])


def test_seed_words():
  # NumPy seed sequences take 64-bit words, TF stateless seeds int64.
  assert stream.seed_word(-1) == 2**64 - 1
  assert stream.seed_word(-1, bits=62) == 2**62 - 1
  assert stream.seed_word(2**70 + 5) == 5


def test_stream_arguments_and_options():
  assert stream.check_stream_args("test", 6, 0, 1, 3) == (1, 3, 2)
  assert stream.check_stream_args("train", np.int64(4), 2, 0, 1) == (0, 1, 4)
  for args, match in [(("dev", 4, 0, 0, 1), "split 'dev'"),
                      (("train", 3, 0, 0, 2), "batch_size=3"),
                      (("train", True, 0, 0, 1), "batch_size=True"),
                      (("train", 4, -1, 0, 1), "start_step=-1"),
                      (("train", 4, 0, 2, 2), "process_index=2")]:
    with pytest.raises(ValueError, match=match):
      stream.check_stream_args(*args)
  assert stream.stream_options({}) == (2, 2)
  assert stream.stream_options({"num_parallel_calls": 3, "prefetch": 0}) == (
      3, 0)
  with pytest.raises(ValueError, match="data.num_parallel_calls=0"):
    stream.stream_options({"num_parallel_calls": 0})


def test_split_ids():
  assert [stream.split_id(s) for s in ("train", "validation", "test")] == [
      0, 1, 2]
  with pytest.raises(ValueError, match="split 'dev'"):
    stream.split_id("dev")
  assert stream.num_split_examples({"num_test": 3}, "test") == 3
  with pytest.raises(ValueError, match="data.num_test=0"):
    stream.num_split_examples({"num_test": 0}, "test")


def _stream(n, g, p, count, repeat, start=0):
  t = stream.tf()
  ds = stream.positions(num_examples=n, batch_size=g, start_step=start,
                        process_index=p, process_count=count, repeat=repeat)
  ds = ds.map(lambda x: stream.position_to_index(x, num_examples=n, seed=7,
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
  s = stream.split_groups(groups, seed=None)
  assert s["validation"] == groups[:2] and s["test"] == groups[2:4]
  assert s["train"] == groups[4:]
  seeded = stream.split_groups(list(reversed(groups)), seed=0)
  order = sorted(groups)
  random.Random(0).shuffle(order)
  assert seeded["validation"] == order[:2]
  assert seeded["train"] == order[4:]
  assert sorted(sum(seeded.values(), [])) == groups


def test_scan_tfrecord_and_read_record(tmp_path):
  path = str(tmp_path / "ep")
  records = [bytes([i]) * (i * 37 + 1) for i in range(6)]
  u.write_tfrecord(path, records)
  offsets, lengths = stream.scan_tfrecord(path)
  size = os.path.getsize(path)
  for i, rec in enumerate(records):
    got = stream.read_record(path, int(offsets[i]), int(lengths[i]), size)
    assert got.numpy() == rec
  with open(path, "r+b") as f:
    f.truncate(size - 3)
  with pytest.raises(stream.DatasetFormatError, match="truncated"):
    stream.scan_tfrecord(path)


def test_iterate_names_the_source():
  t = stream.tf()
  ds = t.data.Dataset.from_tensors(t.constant(b"not a png")).map(
      lambda c: {"x": t.io.decode_png(c)})
  ds = stream.attach_context(ds, "MyData from /some/where")
  with pytest.raises(stream.DatasetReadError, match="MyData from /some/where"):
    list(stream.iterate(ds))


def _rows(step, n, g, p=0, pc=1, repeat=True, seed=0):
  return stream.step_rows(step, n, split=0, batch_size=g, seed=seed,
                          process_index=p, process_count=pc, repeat=repeat)


def test_epochs_are_permutations_and_streams_resume():
  n, g = 10, 4
  seen = np.concatenate([_rows(s, n, g)[0] for s in range(5)])  # 20 rows.
  assert sorted(seen[:10]) == list(range(10))
  assert sorted(seen[10:]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:])  # New order per epoch.
  np.testing.assert_array_equal(_rows(3, n, g)[0], seen[12:16])
  # Another shuffle seed, another order.
  other = np.concatenate([_rows(s, n, g, seed=1)[0] for s in range(3)])
  assert not np.array_equal(other[:10], seen[:10])


def test_processes_split_the_global_batch():
  n, g = 13, 6
  for step in range(4):
    whole = _rows(step, n, g)[0]
    parts = np.concatenate([_rows(step, n, g, p, 3)[0] for p in range(3)])
    np.testing.assert_array_equal(parts, whole)


def test_finite_stream_pads_the_last_batch():
  idx, valid = _rows(2, 10, 4, repeat=False)
  np.testing.assert_array_equal(idx, [8, 9, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False, False])


def test_make_dataset_shapes_valid_and_resume():
  feats = {"x": stream.Feature((2,), np.float32)}

  def load(indices, valid):
    return {"x": np.stack([indices, indices * valid], -1).astype(np.float32)}

  def run(**kw):
    ds = stream.make_dataset(load, feats, n=5, split="validation",
                             batch_size=2, seed=0, process_index=0,
                             process_count=1, **kw)
    return list(ds.as_numpy_iterator())

  out = run(start_step=0, repeat=False)
  assert len(out) == 3
  np.testing.assert_array_equal(out[-1]["valid"], [True, False])
  np.testing.assert_array_equal(out[-1]["x"][:, 0], [4, 0])
  resumed = run(start_step=1, repeat=False)
  np.testing.assert_array_equal(resumed[0]["x"], out[1]["x"])
  train = stream.make_dataset(load, feats, n=5, split="train", batch_size=2,
                              seed=0, start_step=7, process_index=0,
                              process_count=1, repeat=True)
  first = next(iter(train.as_numpy_iterator()))
  assert "valid" not in first
  np.testing.assert_array_equal(first["x"][:, 0], _rows(7, 5, 2)[0])


@pytest.mark.parametrize("options", [stream.StreamOptions(1, 0),
                                     stream.StreamOptions(3, 2)])
def test_numpy_stream_is_the_tf_stream(monkeypatch, options):
  """Without TensorFlow, `make_dataset` gives the same batches in order."""
  feats = {"x": stream.Feature((2,), np.float32),
           "y": stream.Feature((), np.int32)}

  def load(indices, valid):
    return {"x": np.stack([indices, indices * valid], -1).astype(np.float32),
            "y": (indices * 7 % 5).astype(np.int32)}

  def batches(**kw):
    ds = stream.make_dataset(load, feats, n=9, batch_size=4, seed=3,
                             process_index=0, process_count=1,
                             options=options, **kw)
    it = stream.iterate(ds)
    return [next(it) for _ in range(5)] if kw["repeat"] else list(it)

  runs = []
  for installed in (True, False):
    monkeypatch.setattr(stream, "tensorflow_installed", lambda i=installed: i)
    runs.append([batches(split="train", start_step=2, repeat=True),
                 batches(split="test", start_step=0, repeat=False)])
  assert runs[1][1][-1]["valid"].tolist() == [True, False, False, False]
  for tf_run, np_run in zip(*runs):
    assert len(tf_run) == len(np_run)
    for a, b in zip(tf_run, np_run):
      assert sorted(a) == sorted(b)
      for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k])


def test_numpy_stream_raises_the_loader_error(monkeypatch):
  monkeypatch.setattr(stream, "tensorflow_installed", lambda: False)

  def load(indices, valid):
    raise OSError("disk gone")

  ds = stream.make_dataset(load, {"x": stream.Feature((), np.float32)}, n=4,
                           split="train", batch_size=2, seed=0, start_step=0,
                           process_index=0, process_count=1, repeat=True)
  with pytest.raises(OSError, match="disk gone"):
    next(stream.iterate(ds))


def test_make_dataset_rejects_bad_arguments():
  feats = {"x": stream.Feature((1,), np.float32)}
  load = lambda i, v: {"x": np.zeros((len(i), 1), np.float32)}
  with pytest.raises(ValueError, match="batch_size"):
    stream.make_dataset(load, feats, n=5, split="train", batch_size=3,
                        seed=0, start_step=0, process_index=0,
                        process_count=2, repeat=True)
  with pytest.raises(ValueError, match="split"):
    stream.make_dataset(load, feats, n=5, split="dev", batch_size=2, seed=0,
                        start_step=0, process_index=0, process_count=1,
                        repeat=True)


def test_tfrecord_random_access_matches_tf(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "a.tfrecord")
  records = [bytes([i % 251]) * (i * 37 + 1) for i in range(20)]
  assert stream.write_tfrecord(path, records) == 20
  f = stream.RecordFile(path)
  assert len(f) == 20
  for i in (0, 7, 19, 3):
    assert f.read(i) == records[i]
  # The files are standard TFRecords.
  read = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert read == records


@pytest.mark.parametrize("cut", [10, 111])  # Into the payload / the header.
def test_truncated_tfrecord_is_named(tmp_path, cut):
  path = str(tmp_path / "a.tfrecord")
  stream.write_tfrecord(path, [b"x" * 100, b"y" * 100])
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - cut)
  # One scanner for both readers; a DatasetFormatError is a ValueError.
  with pytest.raises(stream.DatasetFormatError,
                     match="a.tfrecord: truncated.*record 1"):
    stream.RecordFile(path)
  with pytest.raises(ValueError, match="a.tfrecord: truncated"):
    stream.scan_tfrecord(path)


def test_apply_overrides():
  c = bouncing_balls.default_config()
  stream.apply_overrides(c, ["image_size=32", "num_balls=(6, 8)",
                             "variant=colour", "radius=3", "data.substeps=4"])
  assert (c.image_size, c.num_balls, c.variant, c.radius, c.substeps) == (
      32, (6, 8), "colour", 3.0, 4)
  with pytest.raises(ValueError, match="no field 'nope'"):
    stream.apply_overrides(c, ["nope=1"])
  with pytest.raises(ValueError, match="int"):
    stream.apply_overrides(c, ["image_size=big"])
  with pytest.raises(ValueError, match="malformed"):
    stream.apply_overrides(c, ["image_size"])


@pytest.mark.parametrize("installed", [True, False])
def test_frames_as_images(monkeypatch, installed):
  """``data.frames_as_images``: a video dataset's first frames as images,
  through tf.data and through the NumPy stream alike."""
  import data_pipelines  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(stream, "tensorflow_installed", lambda: installed)
  c = bouncing_balls.preset_config("colour4")
  c.image_size, c.num_frames, c.num_test = 16, 2, 4
  get = lambda cfg: next(data_pipelines.iterate(data_pipelines.get_dataset(
      cfg, "test", batch_size=2, seed=0, process_index=0, process_count=1)))
  clips = get(c)
  c.frames_as_images = True
  frames = get(c)
  assert "video" not in frames
  np.testing.assert_array_equal(frames["image"], clips["video"][:, 0])
  np.testing.assert_array_equal(frames["segmentation"],
                                clips["segmentation"][:, 0])


def test_a_loader_exception_is_reported_as_itself_not_as_a_corrupt_file():
  # A procedural generator's error (e.g. balls that do not fit) reaches the
  # user as its own type and message, not as a corrupt file to download.
  def load_rows(indices, valid):
    del indices, valid
    raise RuntimeError("Could not place 9 balls without overlap; lower "
                       "data.radius or the number of balls.")

  ds = stream.make_dataset(
      load_rows, {"x": stream.Feature((2,), np.float32)}, n=4,
      split="train", batch_size=2, seed=0, start_step=0, process_index=None,
      process_count=None, repeat=True)
  ds = stream.attach_context(ds, "Balls (procedural)")
  with pytest.raises(stream.DatasetReadError) as e:
    next(stream.iterate(ds))
  text = str(e.value)
  assert text.startswith("Reading Balls (procedural) failed: RuntimeError: "
                         "Could not place 9 balls without overlap; lower "
                         "data.radius"), text
  assert "corrupt" not in text
  assert "load_rows" in text  # the traceback follows


def test_a_bad_file_is_still_reported_as_a_corrupt_file():
  t = stream.tf()
  ds = t.data.Dataset.from_tensors(t.constant(b"not a png")).map(
      lambda c: {"x": t.io.decode_png(c)})
  with pytest.raises(stream.DatasetReadError, match="corrupt, truncated"):
    list(stream.iterate(ds))
