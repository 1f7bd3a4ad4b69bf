"""`python -m ocjax.eval.aggregate`: mean ± std tables over seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ocjax.eval import aggregate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _results(ari_fg, msc_fg, num_slots, nll, step):
  r = {"split": "test", "dataset": "sprites", "num_images": 320,
       "step": step, "loss_nll": nll, "loss_kl": 10.0, "mse": 0.01}
  for mode in ("fixed", "flexible"):
    for seg in ("attention", "decoder"):
      for s in ("ari", "ari_fg", "msc", "msc_fg", "msc_scaled",
                "msc_fg_scaled"):
        r[f"{mode}/{seg}/{s}"] = 0.5
      r[f"{mode}/{seg}/ari_fg"] = ari_fg + (0.1 if mode == "flexible" else 0)
      r[f"{mode}/{seg}/msc_fg"] = msc_fg
    r[f"{mode}/num_slots"] = 7.0 if mode == "fixed" else num_slots
  return r


def _write_run(root, name, evals, fids=None):
  d = root / name
  (d / "eval").mkdir(parents=True)
  for step, r in evals.items():
    (d / "eval" / f"{step}.json").write_text(json.dumps(r))
  for step, value in (fids or {}).items():
    (d / "eval" / f"fid_{step}.json").write_text(json.dumps(
        {"fid": value, "weights_check": "verified", "step": step}))
  # Files that are not evaluations are ignored.
  (d / "eval" / f"{max(evals)}_best_median_worst.json").write_text("{}")
  return str(d)


@pytest.fixture
def runs(tmp_path):
  a = _write_run(tmp_path, "seed0", {
      1000: _results(0.1, 0.1, 1.0, 900.0, 1000),
      2000: _results(0.8, 0.6, 4.0, 1000.0, 2000)}, {2000: 30.0})
  b = _write_run(tmp_path, "seed1", {
      2000: _results(0.6, 0.7, 5.0, 1200.0, 2000)}, {2000: 40.0})
  return a, b


def test_mean_and_std_over_seeds(runs):
  agg = aggregate.aggregate(list(runs))
  assert agg["num_runs"] == 2 and agg["datasets"] == ["sprites"]
  assert [r["step"] for r in agg["runs"]] == [2000, 2000]  # latest
  m = agg["metrics"]
  ari = m["fixed/decoder/ari_fg"]
  assert ari["values"] == [0.8, 0.6]
  assert ari["mean"] == pytest.approx(0.7)
  assert ari["std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
  assert m["flexible/num_slots"]["mean"] == pytest.approx(4.5)
  assert m["fid"]["mean"] == pytest.approx(35.0)
  assert m["fid"]["std"] == pytest.approx(np.sqrt(50.0))
  assert "step" not in m and "num_images" not in m
  assert not agg["notes"]
  pop = aggregate.aggregate(list(runs), ddof=0)
  assert pop["metrics"]["loss_nll"]["std"] == pytest.approx(100.0)


def test_markdown_is_shaped_like_the_papers_tables(runs):
  md = aggregate.format_markdown(aggregate.aggregate(list(runs)))
  lines = md.splitlines()
  head = "| K | Masks | ARI-FG | MSC-FG | ARI | MSC | Avg. K |"
  assert head in lines
  rows = [l for l in lines if l.startswith(("| fixed", "| flexible"))]
  assert [r.split(" | ")[:2] for r in rows] == [
      ["| fixed", "attention"], ["| fixed", "decoder"],
      ["| flexible", "attention"], ["| flexible", "decoder"]]
  assert "| flexible | decoder | 0.800 ± 0.141 | 0.650 ± 0.071 |" in md
  assert "4.50 ± 0.71 |" in rows[-1]
  # Every loss term the model reports (sorted), then MSE and FID.
  assert "| KL | NLL | MSE | FID |" in lines
  assert "35.00 ± 7.07" in md


def test_step_selection_partial_metrics_and_notes(runs, tmp_path):
  a, b = runs
  with pytest.raises(aggregate.AggregateError, match="no evaluation of "
                     r"step 1000; it has steps \[2000\]"):
    aggregate.aggregate([a, b], step=1000)
  agg = aggregate.aggregate([a], step=1000)
  assert agg["metrics"]["fixed/decoder/ari_fg"]["std"] == 0.0
  assert "fid" not in agg["metrics"]  # No FID at step 1000.
  # A run at another step, without FID: FID over n=2 of 3, and a note.
  c = _write_run(tmp_path, "seed2", {
      1500: _results(0.7, 0.7, 4.0, 1100.0, 1500)})
  agg = aggregate.aggregate([a, b, c])
  assert agg["metrics"]["fid"]["n"] == 2
  assert "(n=2)" in aggregate.format_markdown(agg)
  assert any("different steps" in n for n in agg["notes"])


def test_clear_errors(tmp_path):
  with pytest.raises(aggregate.AggregateError, match="not a directory"):
    aggregate.aggregate([str(tmp_path / "missing")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(aggregate.AggregateError, match="No evaluation results"):
    aggregate.aggregate([str(tmp_path / "empty")])
  d = tmp_path / "corrupt" / "eval"
  d.mkdir(parents=True)
  (d / "5.json").write_text("{not json")
  with pytest.raises(aggregate.AggregateError, match=r"Cannot read .*5.json"):
    aggregate.aggregate([str(tmp_path / "corrupt")])


def test_cli_writes_markdown_and_json(runs, tmp_path):
  prefix = str(tmp_path / "tables" / "genesis_v2")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "ocjax.eval.aggregate", *runs,
                      f"--output={prefix}"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "0.700 ± 0.141" in r.stdout
  with open(prefix + ".json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["metrics"]["fid"]["values"] == [30.0, 40.0]
  with open(prefix + ".md", encoding="utf-8") as f:
    assert "| K | Masks |" in f.read()
  r = subprocess.run([sys.executable, "-m", "ocjax.eval.aggregate",
                      str(tmp_path / "nope")], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "not a directory" in r.stderr


def _video_results(ari_fg, mota):
  r = {"split": "test", "dataset": "p2d", "num_images": 200, "step": 10}
  for s in ("ari", "ari_fg", "msc", "msc_fg"):
    r[f"fixed/masks/{s}"] = 0.5
  r["fixed/masks/ari_fg"] = ari_fg
  for s in ("mota", "motp", "match", "id_switches", "false_positives",
            "misses", "mostly_detected", "mostly_tracked"):
    r[f"fixed/masks/mot_{s}"] = 10.0
  r["fixed/masks/mot_mota"] = mota
  return r


def test_tracking_table_and_comparison_rows(tmp_path):
  """Video runs get the MOT table (APEX Table II); --row groups give one
  row per model or ablation (Tables I-III)."""
  a = _write_run(tmp_path, "apex0", {10: _video_results(0.8, 50.0)})
  b = _write_run(tmp_path, "apex1", {10: _video_results(0.9, 40.0)})
  c = _write_run(tmp_path, "noent", {10: _video_results(0.6, -5.0)})
  md = aggregate.format_markdown(aggregate.aggregate([a, b]))
  assert "| MOTA | MOTP | Match | ID S. | FPs | Miss | MD | MT |" in md
  assert "| fixed | masks | 45.0 ± 7.1 | 10.0 ± 0.0" in md
  result = aggregate.compare([("APEX", [a, b]), ("No entropy loss", [c])])
  table = aggregate.format_comparison(result)
  assert "| APEX | 2 | 0.850 ± 0.071 | 0.500 ± 0.000" in table
  assert "| No entropy loss | 1 | 0.600 ± 0.000" in table
  assert "-5.0 ± 0.0" in table
  out = tmp_path / "table"
  proc = subprocess.run(
      [sys.executable, "-m", "ocjax.eval.aggregate", f"--row=APEX={a},{b}",
       f"--row=No entropy loss={c}", f"--output={out}"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "| APEX | 2 |" in (tmp_path / "table.md").read_text()
  assert json.loads((tmp_path / "table.json").read_text())["groups"][1][
      "name"] == "No entropy loss"
  bad = subprocess.run(
      [sys.executable, "-m", "ocjax.eval.aggregate", "--row=APEX"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and "NAME=DIR" in bad.stderr


def test_miou_column_appears_where_the_results_have_it(tmp_path):
  for seed, value in ((0, 0.4), (1, 0.6)):
    folder = tmp_path / f"seed{seed}" / "eval"
    folder.mkdir(parents=True)
    (folder / "100.json").write_text(json.dumps({
        "step": 100, "dataset": "sprites", "num_images": 8,
        "fixed/masks/ari_fg": 0.5, "fixed/masks/msc_fg": 0.5,
        "fixed/masks/ari": 0.5, "fixed/masks/msc": 0.5,
        "fixed/masks/miou": value, "mse": 0.01}))
  agg = aggregate.aggregate([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
  md = aggregate.format_markdown(agg)
  assert "| K | Masks | ARI-FG | MSC-FG | ARI | MSC | mIoU | Avg. K |" in md
  assert "0.500 ± 0.141" in md
