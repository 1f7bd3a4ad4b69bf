"""`ocjax.eval.video_table` and `ocjax.eval.prediction`: paper 004's
Tables 1-2 and Fig. 5 from trained runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ocjax import run as run_lib
from ocjax.eval import prediction
from ocjax.eval import video_table
from ocjax.train import loop


def _train(name: str, workdir: str) -> str:
  config = run_lib.load_experiment(f"experiments/{name}.py:tiny,smoke")
  with config.unlocked():
    config.experiment = f"experiments/{name}.py:tiny,smoke"
    config.train.image_every = 100
  loop.train(config, workdir)
  return workdir


def test_markdown_rows_and_seeds():
  result = {"video": {10: {"num_runs": 2, "num_videos": 4, **{
      s: 0.5 for s in video_table.SCORES}, **{
          s + "_std": 0.1 for s in video_table.SCORES}}}}
  md = video_table.format_markdown(result)
  assert "| video | 0.5000 ± 0.1000 |" in md
  assert "ari_fg @10" in md


def test_bad_run_argument_is_named(tmp_path, capsys):
  with pytest.raises(SystemExit):
    video_table.main(["--data=experiments/provide.py:tiny",
                      f"--run=x={tmp_path}/missing"])
  assert "missing is not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_one_command_table(tmp_path):
  video = _train("provide", str(tmp_path / "video"))
  image = _train("iodine", str(tmp_path / "iodine"))
  out = str(tmp_path / "table")
  assert video_table.main([
      "--data=experiments/provide.py:tiny", f"--run=video={video}",
      f"--run=iodine={image}", f"--run=iodine={image}", "--lengths=2,3",
      "--num_videos=4", "--batch_size=2", "--num_slots=4",
      f"--out={out}"]) == 0
  with open(out + ".json", encoding="utf-8") as f:
    result = json.load(f)
  assert set(result) == {"video", "iodine"}
  for name, rows in result.items():
    assert set(rows) == {"2", "3"}
    for row in rows.values():
      assert row["num_videos"] == 4
      for score in video_table.SCORES:
        assert np.isfinite(row[score]), (name, score)
        assert -1.0 <= row[score] <= 1.0 or score == "mse"
  # The same run twice: two "seeds" with identical scores.
  assert result["iodine"]["2"]["num_runs"] == 2
  assert result["iodine"]["2"]["ari_std"] == pytest.approx(0.0, abs=1e-7)
  assert result["video"]["2"]["num_runs"] == 1
  with open(out + ".md", encoding="utf-8") as f:
    assert "| video |" in f.read()

  # Fig. 5: the error curve over prediction steps.
  curve = prediction.predict(video, observed=2, predicted=2, num_videos=4,
                             batch_size=2)
  assert curve["num_videos"] == 4
  assert len(curve["mse_by_step"]) == len(curve["ari_fg_by_step"]) == 2
  assert all(np.isfinite(curve["mse_by_step"]))
  step = curve["step"]
  for ext in ("json", "png"):
    assert (tmp_path / "video" / "eval" / f"prediction_{step}.{ext}").exists()
  with pytest.raises(ValueError, match="does not predict frames"):
    prediction.predict(image, observed=2, predicted=1)
