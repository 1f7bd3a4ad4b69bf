"""The best / median / worst grid of `--mode=eval`, and the shared test run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import test_train
from ocjax import run as run_lib
from ocjax.eval import best_worst
from ocjax.eval import runner


def make_run(tmp_path_factory):
  """``(config, workdir)``: a run with an untrained checkpoint (step 0).

  The tiny config of `test_train`; made once per test session (the eval,
  FID and segment tests share it) and only initialised, not trained, since
  these tests exercise the tools, not the model.
  """
  workdir = str(tmp_path_factory.getbasetemp() / "eval_tools_run")
  config = test_train.tiny_config(2)
  if os.path.exists(os.path.join(workdir, "checkpoints")):
    return config, workdir
  run_lib.check_workdir_config(config, workdir)
  run = run_lib.build(config)
  ck = run.checkpointer(workdir)
  state = run.init_state()
  ck.save(0, state, {"step": 0, "data_position": 0,
                     "model": config.model.name})
  ck.close()
  return config, workdir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return make_run(tmp_path_factory)


def test_select_ranks_best_median_worst():
  scores = np.array([0.5, 0.9, np.nan, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6])
  picks = best_worst.select(scores, 3)
  # Finite scores, high -> low: 0.9 0.8 0.7 0.6 0.5 0.3 0.2 0.1.
  np.testing.assert_array_equal(picks["best"], [1, 6, 4])
  np.testing.assert_array_equal(picks["median"], [4, 8, 0])
  np.testing.assert_array_equal(picks["worst"], [5, 7, 3])
  small = best_worst.select(np.array([0.2, 0.4]), 3)
  assert [len(v) for v in small.values()] == [2, 2, 2]
  assert all(len(v) == 0 for v in best_worst.select(np.array([]), 3).values())


def test_score_key_follows_the_model_declaration():
  keys = {"fixed/attention/ari_fg": 0, "fixed/decoder/ari_fg": 0,
          "flexible/decoder/ari_fg": 0, "flexible/attention/ari_fg": 0,
          "position": 0}
  # GENESIS-V2 reports its decoder masks; its first mode is fixed K.
  run = run_lib.build(test_train.tiny_config(2))
  assert run.model.reported_segmentation == "decoder"
  assert best_worst.score_key(keys, run) == "fixed/decoder/ari_fg"
  # Without a model: the first segmentation in a fixed-K mode.
  assert best_worst.score_key(keys) == "fixed/attention/ari_fg"
  assert best_worst.score_key({"flexible/masks/ari_fg": 0}) == (
      "flexible/masks/ari_fg")
  with pytest.raises(KeyError, match="ari_fg"):
    best_worst.score_key({"mse": 0})


def test_stack_groups_adds_a_banner_per_group():
  tiles = {"best": np.zeros((10, 30, 3), np.uint8),
           "worst": np.zeros((12, 20, 3), np.uint8)}
  out = best_worst.stack_groups(tiles, {"best": "best", "worst": "worst"})
  assert out.shape == (14 + 10 + 14 + 12, 30, 3) and out.dtype == np.uint8


def test_evaluate_writes_the_best_median_worst_grid(run, monkeypatch):
  config, workdir = run
  per_image = {}
  real = best_worst.write_grid

  def spy(*args, **kwargs):
    per_image.update(args[4])
    return real(*args, **kwargs)

  monkeypatch.setattr(best_worst, "write_grid", spy)
  results = runner.evaluate(workdir)
  assert results["num_images"] == config.eval.num_examples
  png = os.path.join(workdir, "eval", "0_best_median_worst.png")
  assert os.path.exists(png)
  with open(png[:-4] + ".json", encoding="utf-8") as f:
    record = json.load(f)
  assert record["metric"] == "fixed/decoder/ari_fg"
  groups = record["groups"]
  assert [len(groups[g]) for g in best_worst.GROUPS] == [3, 3, 3]
  best = [e["score"] for e in groups["best"]]
  worst = [e["score"] for e in groups["worst"]]
  assert best == sorted(best, reverse=True) and min(best) >= max(worst)
  # The evaluation handed over every image's score and stream position.
  scores = per_image["fixed/decoder/ari_fg"]
  positions = list(per_image["position"])
  assert sorted(positions) == list(range(config.eval.num_examples))
  assert np.mean(scores) == pytest.approx(results["fixed/decoder/ari_fg"])
  for entries in groups.values():
    for e in entries:
      assert scores[positions.index(e["position"])] == e["score"]
      # The refetched images score what they scored during evaluation.
      assert e["rescored"] == pytest.approx(e["score"], abs=1e-6)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(png) as img:
    width, height = img.size
  size = config.data.image_size
  # 9 rows of tiles (input, GT, recon, 2 masks, 3 components) + banners.
  assert height > 9 * size and width > 8 * size


def test_config_from_workdir_fills_fields_added_since(tmp_path):
  config = test_train.tiny_config(2)
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["flexible_decode_all"]  # A run older than that field.
  saved["data"] = {"name": "objects_room", "image_size": 64,
                   "data_dir": "/data"}
  (tmp_path / "config.json").write_text(json.dumps(saved))
  restored = run_lib.config_from_workdir(str(tmp_path))
  assert restored.model.flexible_decode_all is False  # the default
  assert restored.model.num_slots == config.model.num_slots
  assert restored.train.num_steps == 2
  # Another dataset: its section as saved, not merged with the sprites'.
  assert restored.data.to_dict() == saved["data"]
  # JSON lists come back as the tuples the experiment file wrote.
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  assert run_lib.config_from_workdir(str(tmp_path)).data.shapes == (
      config.data.shapes)
  with pytest.raises(FileNotFoundError, match="config.json"):
    run_lib.config_from_workdir(str(tmp_path / "nowhere"))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="no 'model' section"):
    run_lib.config_from_workdir(str(tmp_path))


def test_evaluate_scores_clevrtex_miou_of_every_image_segmentation(run):
  """mIoU (CLEVRTEX's matched IoU, paper 003's metric) of each segmentation,
  recomputed here from the model's masks on the same held-out images."""
  import data_pipelines  # pylint: disable=g-import-not-at-top
  from ocjax.metrics import segmentation as seg_metrics  # pylint: disable=g-import-not-at-top
  config, workdir = run
  r, state = run_lib.restore(workdir)
  variables = state.variables()
  results = runner.evaluate_variables(r, variables)
  apply = r.apply_fn("eval", "fixed")
  ds = data_pipelines.get_dataset(config.data, config.eval.split,
                                  batch_size=config.eval.batch_size,
                                  seed=config.seed, repeat=False)
  expected, seen = {}, 0
  for batch in data_pipelines.iterate(ds):
    if seen >= config.eval.num_examples:
      break
    out = apply(variables, run_lib.model_inputs(batch))
    keep = np.asarray(batch["valid"], bool)
    for name, masks in out.segmentations.items():
      miou = seg_metrics.miou_clevrtex_from_masks(
          np.asarray(masks)[keep], np.asarray(batch["segmentation"])[keep])
      expected.setdefault(name, []).append(miou["miou"])
    seen += int(keep.sum())
  assert expected
  for name, chunks in expected.items():
    values = np.concatenate(chunks)[:config.eval.num_examples]
    assert 0.0 <= results[f"fixed/{name}/miou"] <= 1.0
    assert results[f"fixed/{name}/miou"] == pytest.approx(np.mean(values))
  assert "miou" in runner.format_table(results).splitlines()[0]
