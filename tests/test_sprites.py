"""Tests of the procedural sprites dataset (data_pipelines/sprites.py)."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import data_pipelines
from data_pipelines import numpy_calls
from data_pipelines import sprites


def _config(**overrides):
  config = sprites.default_config()
  config.image_size = 32
  config.num_train = 10
  config.num_validation = 10
  config.num_test = 7
  config.update(overrides)
  return config


def _batches(config, split, num=None, **kwargs):
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  ds = sprites.get_dataset(config, split, **kwargs)
  it = ds.as_numpy_iterator()
  return list(it if num is None else itertools.islice(it, num))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_default_config_declares_every_field():
  config = sprites.default_config()
  assert config.name == "sprites" and config.data_dir == ""
  assert config.image_size == 64
  assert (config.min_objects, config.max_objects) == (2, 5)
  assert config.background == "mixed"
  assert config.num_train > config.num_validation > 0
  assert set(config.shapes) == set(sprites.SHAPES)
  assert sprites.num_examples(config, "test") == config.num_test


def test_shapes_dtypes_and_ranges():
  config = _config(image_size=24)
  (batch,) = _batches(config, "train", 1, batch_size=4, seed=0)
  assert set(batch) == {"image", "segmentation"}
  assert batch["image"].shape == (4, 24, 24, 3)
  assert batch["image"].dtype == np.float32
  assert batch["segmentation"].shape == (4, 24, 24)
  assert batch["segmentation"].dtype == np.int32
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1
  assert 0 <= batch["segmentation"].min()
  assert batch["segmentation"].max() <= config.max_objects


def test_registry_dispatches_here():
  config = _config()
  a = data_pipelines.get_dataset(config, "test", batch_size=4, seed=0,
                                 process_index=0, process_count=1)
  (b, *_) = list(a.as_numpy_iterator())
  assert b["image"].shape == (4, 32, 32, 3) and "valid" in b
  assert data_pipelines.num_examples(config, "test") == 7


@pytest.mark.parametrize("image_size", [16, 64])
def test_segmentation_matches_drawing(image_size):
  config = _config(image_size=image_size)
  images, segs = sprites.render_batch(config, "train", range(40), seed=3)
  scale = image_size / 64
  min_pixels = max(1, round(config.min_visible_pixels * scale * scale))
  counts = []
  for image, seg in zip(images, segs):
    labels = np.unique(seg)
    n = labels.max()
    counts.append(n)
    assert config.min_objects <= n <= config.max_objects
    np.testing.assert_array_equal(labels, np.arange(n + 1))  # 0 is there.
    background = image[seg == 0]  # [P, 3]
    colours = []
    for label in range(1, n + 1):
      pixels = image[seg == label]  # [p, 3]
      assert len(pixels) >= min_pixels
      # Flat, hard-edged sprites: one colour per label.
      np.testing.assert_array_equal(pixels, np.broadcast_to(pixels[0],
                                                            pixels.shape))
      colours.append(pixels[0])
      # Distinguishable from every background pixel.
      dist = np.linalg.norm(background - pixels[0], axis=-1)
      assert dist.min() >= config.min_color_distance - 1e-4
    for a, b in itertools.combinations(colours, 2):
      assert np.linalg.norm(a - b) >= config.min_object_distance - 1e-4
  assert set(counts) == set(range(config.min_objects, config.max_objects + 1))


def test_background_modes():
  plain = _config(background="plain")
  textured = _config(background="textured")
  for config, expect_flat in ((plain, True), (textured, False)):
    images, segs = sprites.render_batch(config, "train", range(12), seed=0)
    for image, seg in zip(images, segs):
      bg = image[seg == 0]
      flat = np.all(bg == bg[0])
      if expect_flat:
        assert flat
      else:
        spread = np.linalg.norm(bg.max(0) - bg.min(0))
        assert not flat and spread <= config.texture_contrast + 1e-5


def test_render_example_is_pure():
  config = _config()
  image, seg = sprites.render_example(config, "validation", 5, seed=1)
  images, segs = sprites.render_batch(config, "validation", [9, 5, 2], 1)
  np.testing.assert_array_equal(image, images[1])
  np.testing.assert_array_equal(seg, segs[1])
  # Independent of the other scene fields' bookkeeping (split sizes).
  other = _config(num_validation=500)
  image2, _ = sprites.render_example(other, "validation", 5, seed=1)
  np.testing.assert_array_equal(image, image2)


def test_determinism_and_seeds():
  config = _config(content_seed=None)
  a = _batches(config, "train", 3, batch_size=4, seed=7)
  b = _batches(config, "train", 3, batch_size=4, seed=7)
  c = _batches(config, "train", 3, batch_size=4, seed=8)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  # Same example index, different seeds: different content.
  x, _ = sprites.render_example(config, "train", 0, seed=7)
  y, _ = sprites.render_example(config, "train", 0, seed=8)
  assert not np.array_equal(x, y)


def test_content_seed_decouples_content_from_shuffling():
  config = _config(content_seed=5)
  a = _batches(config, "test", batch_size=4, seed=0)
  b = _batches(config, "test", batch_size=4, seed=1)
  _assert_batches_equal(a, b)  # Same scenes whatever the run's seed.
  x, _ = sprites.render_example(config, "test", 0, seed=0)
  np.testing.assert_array_equal(
      x, sprites.render_example(_config(content_seed=None), "test", 0,
                                seed=5)[0])
  # The train stream still shuffles with the run's seed.
  i0, _ = sprites.step_indices(config, "train", 0, batch_size=10, seed=0)
  i1, _ = sprites.step_indices(config, "train", 0, batch_size=10, seed=1)
  assert not np.array_equal(i0, i1)


def test_splits_share_no_content():
  config = _config()
  seen = {}
  for split in data_pipelines.SPLITS:
    images, _ = sprites.render_batch(config, split, range(10), seed=0)
    for i, image in enumerate(images):
      key = image.tobytes()
      assert key not in seen, (split, i, seen.get(key))
      seen[key] = (split, i)


def test_train_index_stream_is_a_permutation_per_epoch():
  config = _config()  # num_train = 10.
  rows = [sprites.step_indices(config, "train", s, batch_size=5, seed=0)
          for s in range(6)]
  assert all(valid.all() for _, valid in rows)
  stream = np.concatenate([i for i, _ in rows])  # 3 epochs.
  epochs = stream.reshape(3, 10)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
  assert len({tuple(e) for e in epochs}) == 3  # A new order each epoch.
  other, _ = sprites.step_indices(config, "train", 0, batch_size=5, seed=1)
  assert not np.array_equal(other, stream[:5])


@pytest.mark.parametrize("start_step", [1, 3])
def test_resume_matches_uninterrupted_stream(start_step):
  # num_train = 10, batch 4: batches straddle epoch boundaries.
  config = _config()
  full = _batches(config, "train", 7, batch_size=4, seed=2)
  resumed = _batches(config, "train", 7 - start_step, batch_size=4, seed=2,
                     start_step=start_step)
  _assert_batches_equal(full[start_step:], resumed)


def test_resume_is_constant_time():
  config = _config(num_train=1000)
  step = 10**12  # Epoch 4e9: must not replay the stream.
  indices, _ = sprites.step_indices(config, "train", step, batch_size=4,
                                    seed=0)
  (batch,) = _batches(config, "train", 1, batch_size=4, seed=0,
                      start_step=step)
  images, segs = sprites.render_batch(config, "train", indices, 0)
  np.testing.assert_array_equal(batch["image"], images)
  np.testing.assert_array_equal(batch["segmentation"], segs)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_process_sharding(split):
  config = _config(num_train=40, num_validation=10)
  kwargs = dict(batch_size=8, seed=4, num=2)
  whole = _batches(config, split, **kwargs)
  parts = [_batches(config, split, process_index=p, process_count=2,
                    **kwargs) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]),
          batch[key], err_msg=key)
    rows = [sprites.step_indices(config, split, step, batch_size=8, seed=4,
                                 process_index=p, process_count=2)
            for p in range(2)]
    (i0, v0), (i1, v1) = rows
    assert not set(i0[v0]) & set(i1[v1])
    assert not np.array_equal(parts[0][step]["image"],
                              parts[1][step]["image"])


def test_eval_split_is_finite_ordered_and_padded():
  config = _config()  # num_validation = 10.
  batches = _batches(config, "validation", batch_size=4, seed=0)
  assert [b["valid"].tolist() for b in batches] == [
      [True] * 4, [True] * 4, [True, True, False, False]]
  images, segs = sprites.render_batch(config, "validation", range(10), 0)
  got = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(got[:10], images)
  np.testing.assert_array_equal(
      np.concatenate([b["segmentation"] for b in batches])[:10], segs)
  assert not got[10:].any()  # Padding rows are zeros.
  assert not np.concatenate([b["segmentation"] for b in batches])[10:].any()
  # Resuming an evaluation skips whole batches.
  rest = _batches(config, "validation", batch_size=4, seed=0, start_step=2)
  _assert_batches_equal(batches[2:], rest)
  # Per process: 2 of each 4 rows; process 1 gets only padding at the end.
  p1 = _batches(config, "validation", batch_size=4, seed=0, process_index=1,
                process_count=2)
  assert [b["valid"].sum() for b in p1] == [2, 2, 0]
  # A train split evaluated once: finite, in order.
  train = _batches(config, "train", batch_size=4, seed=0, repeat=False)
  assert len(train) == 3 and sum(b["valid"].sum() for b in train) == 10


@pytest.mark.parametrize("field,value,match", [
    ("image_size", 8, r"data\.image_size=8.*>= 16"),
    ("min_objects", 0, r"data\.min_objects"),
    ("max_objects", 1, r"data\.max_objects=1.*min_objects=2"),
    ("background", "stars", r"data\.background='stars'.*'plain'"),
    ("shapes", ("hexagon",), r"data\.shapes.*subset"),
    ("textures", ("marble",), r"data\.textures.*subset"),
    ("max_radius", 30.0, r"data\.min_radius=.*max_radius"),
    ("num_test", 0, r"data\.num_test"),
])
def test_bad_config_raises(field, value, match):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=match):
    sprites.get_dataset(config, "test", batch_size=2, seed=0,
                        process_index=0, process_count=1)


def test_bad_arguments_raise():
  config = _config()
  with pytest.raises(ValueError, match="split 'dev'"):
    sprites.get_dataset(config, "dev", batch_size=2, seed=0,
                        process_index=0, process_count=1)
  with pytest.raises(ValueError, match="split"):
    sprites.num_examples(config, "dev")
  with pytest.raises(ValueError, match="batch_size=3"):
    sprites.get_dataset(config, "train", batch_size=3, seed=0,
                        process_index=0, process_count=2)
  with pytest.raises(ValueError, match="image_size"):
    sprites.render_example(_config(image_size=12), "train", 0, seed=0)


def test_exit_with_live_iterator_does_not_hang():
  # A NumPy call in flight while Python finalises used to hang the process.
  code = (
      "from data_pipelines import sprites\n"
      "c = sprites.default_config()\n"
      "ds = sprites.get_dataset(c, 'train', batch_size=32, seed=0,\n"
      "                         process_index=0, process_count=1)\n"
      "it = ds.as_numpy_iterator()\n"
      "next(it)\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], cwd=root,
                          capture_output=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_quiesce_stops_work():
  calls = numpy_calls.NumpyCalls()
  with calls as work:
    assert work
  calls.quiesce(quiet_s=0.0, timeout_s=1.0)
  with calls as work:
    assert not work
