"""The procedural Tetrominoes-like dataset: determinism and exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

import data_pipelines
from data_pipelines import tetrominoes_like as tl
from test_data_utils import check_resume
from test_data_utils import check_sharding


def _config(**overrides):
  c = tl.default_config()
  c.num_train, c.num_validation, c.num_test = 40, 10, 12
  for k, v in overrides.items():
    c[k] = v
  return c


def _first(config, split, batch_size=8, seed=0, **kw):
  ds = data_pipelines.get_dataset(config, split, batch_size=batch_size,
                                  seed=seed, process_index=0,
                                  process_count=1, **kw)
  return next(data_pipelines.iterate(ds))


def test_nineteen_tetromino_shapes():
  assert len(tl.SHAPES) == 19
  canon = set()
  for cells in tl.SHAPES:
    assert len(cells) == 4 and len(set(cells)) == 4
    # Connected through edges.
    seen, todo = {cells[0]}, [cells[0]]
    while todo:
      r, c = todo.pop()
      for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        if n in cells and n not in seen:
          seen.add(n)
          todo.append(n)
    assert len(seen) == 4
    canon.add(frozenset(cells))
  assert len(canon) == 19  # all distinct


def test_ground_truth_is_exact():
  config = _config()
  batch = _first(config, "test", batch_size=12)
  image, seg = batch["image"], batch["segmentation"]
  assert image.shape == (12, 32, 32, 3) and seg.shape == (12, 32, 32)
  block = config.block_size
  for x, s in zip(image, seg):
    labels = sorted(set(np.unique(s)) - {0})
    assert labels == [1, 2, 3]
    np.testing.assert_array_equal(x[s == 0], 0.0)  # black background
    for label in labels:
      pixels = x[s == label]
      # One flat colour from the palette, 4 cells of block x block pixels.
      assert len(np.unique(pixels, axis=0)) == 1
      assert any(np.array_equal(pixels[0], c) for c in tl.COLOURS)
      assert pixels.shape[0] == 4 * block * block
      # At least `gap` pixels from every other piece (8-neighbourhood).
      mask = s == label
      grown = np.zeros_like(mask)
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
      others = (s != 0) & ~mask
      assert not np.any(grown & others)


def test_deterministic_and_splits_differ():
  config = _config()
  a = _first(config, "train", seed=3)
  b = _first(config, "train", seed=3)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
  # The content follows content_seed, not the shuffling seed.
  t1 = _first(config, "test", seed=1, repeat=False)
  t2 = _first(config, "test", seed=2, repeat=False)
  np.testing.assert_array_equal(t1["image"], t2["image"])
  other = _config(content_seed=7)
  t3 = _first(other, "test", seed=1, repeat=False)
  assert not np.array_equal(t1["image"], t3["image"])
  v = _first(config, "validation", repeat=False)
  assert not np.array_equal(v["image"], t1["image"][:8])
  images, segs = tl.render_batch(config, "test", [0, 1], seed=0)
  np.testing.assert_array_equal(images, t1["image"][:2])
  np.testing.assert_array_equal(segs, t1["segmentation"][:2])


def test_resume_sharding_and_padding():
  config = _config()
  check_resume(config, "train", batch_size=8, start_step=7, repeat=True)
  check_sharding(config, "train", batch_size=8, steps=3, repeat=True)
  batches = list(data_pipelines.iterate(data_pipelines.get_dataset(
      config, "test", batch_size=8, seed=0, process_index=0,
      process_count=1, repeat=False)))
  assert [int(b["valid"].sum()) for b in batches] == [8, 4]
  assert np.all(batches[1]["image"][4:] == 0)


def test_distinct_colours():
  config = _config(distinct_colours=True)
  batch = _first(config, "test", batch_size=12)
  for x, s in zip(batch["image"], batch["segmentation"]):
    colours = {tuple(x[s == label][0]) for label in (1, 2, 3)}
    assert len(colours) == 3
  with pytest.raises(ValueError, match="distinct_colours"):
    _first(_config(distinct_colours=True, num_colours=2), "train")


def test_with_background_gives_the_black_background():
  plain = _first(_config(), "test", batch_size=4)
  batch = _first(_config(with_background=True), "test", batch_size=4)
  assert "background" not in plain
  assert batch["background"].shape == batch["image"].shape
  np.testing.assert_array_equal(batch["image"], plain["image"])
  # The background is what the scene shows where no piece is.
  bg = batch["segmentation"] == 0
  np.testing.assert_array_equal(batch["background"][bg], batch["image"][bg])
  assert not batch["background"].any()


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match="block_size"):
    _first(_config(block_size=9), "train")
  with pytest.raises(ValueError, match="num_colours"):
    _first(_config(num_colours=7), "train")
