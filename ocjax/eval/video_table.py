"""Video decomposition scores by clip length: paper 004's Tables 1 and 2.

    python -m ocjax.eval.video_table --data=experiments/provide.py:colour \
        --run=video=runs/provide --run=seq_iodine=runs/seq \
        --run=iodine=runs/iodine --lengths=10,20,30,40 --num_videos=100

For every run and clip length L, the test clips of ``--data``'s data section
(with ``num_frames = L``) are decomposed: a video model (``input_key`` =
``"video"``) sees each clip; an image model (IODINE) sees every frame as an
image, independently, as paper 004 evaluates it (Sec. 4.3). Scores per
frame, averaged over frames and clips (paper 004 Sec. 4.2): ``ari`` (all
pixels), ``ari_fg`` (F-ARI, foreground pixels) and ``mse`` (per pixel and
channel); also ``ari_video`` (a clip as one partition: slots must keep their
objects). A name given several times (seeds) reports mean +- std over its
runs. ``--num_slots`` changes K at test time (Table 2: 5 -> 9 slots for 6-8
balls); models whose parameters do not depend on K (the iterative-inference
family) accept it. Writes ``--out`` (.json and .md) and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from typing import Sequence

import jax
import numpy as np

import data_pipelines
from ocjax import run as run_lib
from ocjax.metrics import segmentation as seg_metrics

SCORES = ("ari", "ari_fg", "mse", "ari_video")


def _load(workdir: str, num_slots: int | None, scan_unroll: int | None):
  """The run of ``workdir`` (its latest checkpoint), K and the loop's unroll
  optionally changed (neither changes the parameters)."""
  config = run_lib.config_from_workdir(workdir)
  with config.unlocked():
    if num_slots:
      config.model.num_slots = int(num_slots)
    if scan_unroll is not None and "scan_unroll" in config.model:
      config.model.scan_unroll = int(scan_unroll)
  run = run_lib.build(config)
  checkpointer = run.checkpointer(workdir, read_only=True)
  try:
    state, _ = run.restore(checkpointer)
  finally:
    checkpointer.close()
  return run, state


def score_run(run, state, data_config, length: int, *, num_videos: int,
              batch_size: int) -> dict[str, float]:
  """Mean per-frame scores of ``run`` on ``num_videos`` test clips of
  ``length`` frames."""
  data = data_config.copy_and_resolve_references()
  with data.unlocked():
    data.num_frames = int(length)
    if "episode_length" in data and data.episode_length < length:
      data.episode_length = int(length)
  apply = run.apply_fn("eval")
  variables = state.variables()
  ds = data_pipelines.get_dataset(data, "test", batch_size=batch_size,
                                  seed=run.seed, process_index=0,
                                  process_count=1, repeat=False)
  sums, count = collections.defaultdict(float), 0
  for batch in data_pipelines.iterate(ds):
    video, truth = batch["video"], batch["segmentation"]
    valid = np.asarray(batch.get("valid", np.ones(len(video), bool)))
    b, t = video.shape[:2]
    if run.model.input_key == "video":
      out = apply(variables, {"video": video})
      recon, masks = np.asarray(out.recon), np.asarray(out.masks)
    else:  # an image model: each frame on its own
      frames = video.reshape((b * t,) + video.shape[2:])
      out = apply(variables, {"image": frames})
      recon = np.asarray(out.recon).reshape(video.shape)
      masks = np.asarray(out.masks)
      masks = masks.reshape((b, t) + masks.shape[1:])
    scores = jax.device_get(seg_metrics.video_segmentation_metrics(
        masks, truth))
    per_clip = {
        "ari": np.mean(scores["ari"], 1), "ari_fg": np.mean(scores["ari_fg"],
                                                            1),
        "ari_video": scores["ari_video"],
        "mse": np.mean((recon - video) ** 2, axis=(1, 2, 3, 4))}
    for key, value in per_clip.items():
      sums[key] += float(np.sum(np.asarray(value)[valid]))
    count += int(valid.sum())
    if count >= num_videos:
      break
  if not count:
    raise ValueError(f"The test split of data {data.name!r} gave no clips.")
  return {key: sums[key] / count for key in SCORES} | {"num_videos": count}


def table(runs: Sequence[tuple[str, str]], data_config,
          lengths: Sequence[int], *, num_videos: int, batch_size: int,
          num_slots: int | None = None, scan_unroll: int | None = None
          ) -> dict[str, dict[int, dict[str, float]]]:
  """``{name: {length: {score: mean, score + "_std": std, ...}}}``."""
  per_run = collections.defaultdict(lambda: collections.defaultdict(list))
  for name, workdir in runs:
    run, state = _load(workdir, num_slots, scan_unroll)
    for length in lengths:
      scores = score_run(run, state, data_config, length,
                         num_videos=num_videos, batch_size=batch_size)
      print(f"{name} ({workdir}) length {length}: " + ", ".join(
          f"{k} {scores[k]:.4f}" for k in SCORES), flush=True)
      per_run[name][length].append(scores)
  result = {}
  for name, by_length in per_run.items():
    result[name] = {}
    for length, rows in by_length.items():
      row = {"num_runs": len(rows), "num_videos": rows[0]["num_videos"]}
      for key in SCORES:
        values = np.array([r[key] for r in rows])
        row[key], row[key + "_std"] = float(values.mean()), float(
            values.std())
      result[name][length] = row
  return result


def format_markdown(result) -> str:
  """One row per run name, the scores at every length (as Table 1)."""
  lengths = sorted({l for rows in result.values() for l in rows})
  head = "| run | " + " | ".join(
      f"{s} @{l}" for s in SCORES for l in lengths) + " |"
  lines = [head, "|" + " --- |" * (1 + len(SCORES) * len(lengths))]
  for name, rows in result.items():
    cells = []
    for s in SCORES:
      for l in lengths:
        r = rows.get(l)
        if r is None:
          cells.append("")
        elif r["num_runs"] > 1:
          cells.append(f"{r[s]:.4f} ± {r[s + '_std']:.4f}")
        else:
          cells.append(f"{r[s]:.4f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", action="append", required=True,
                      help="NAME=WORKDIR (repeat; a repeated NAME = seeds)")
  parser.add_argument("--data", required=True,
                      help="experiment whose data section gives the clips, "
                      "e.g. experiments/provide.py:colour")
  parser.add_argument("--lengths", default="10,20,30,40")
  parser.add_argument("--num_videos", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_slots", type=int, default=0,
                      help="K at test time (0: the run's)")
  parser.add_argument("--scan_unroll", type=int, default=None,
                      help="unroll of the models' loops (long clips compile "
                      "faster with 1; same numbers)")
  parser.add_argument("--set", action="append", default=[],
                      help="data field=value for the clips (e.g. "
                      "test_num_balls=6,8)")
  parser.add_argument("--out", default="",
                      help="path prefix of the .json and .md written")
  args = parser.parse_args(argv)
  runs = []
  for item in args.run:
    if "=" not in item:
      parser.error(f"--run {item!r}: expected NAME=WORKDIR")
    name, workdir = item.split("=", 1)
    if not os.path.isdir(workdir):
      parser.error(f"--run {item!r}: {workdir} is not a directory")
    runs.append((name, workdir))
  data = run_lib.load_experiment(args.data).data
  data = data.copy_and_resolve_references()
  with data.unlocked():
    for item in args.set:
      key, _, value = item.partition("=")
      if key not in data:
        parser.error(f"--set {item!r}: data has no field {key!r}")
      old = data[key]
      if isinstance(old, tuple):
        data[key] = tuple(type(old[0])(v) for v in value.split(","))
      else:
        data[key] = type(old)(value)
  lengths = [int(l) for l in args.lengths.split(",") if l]
  result = table(runs, data, lengths, num_videos=args.num_videos,
                 batch_size=args.batch_size, num_slots=args.num_slots or None,
                 scan_unroll=args.scan_unroll)
  md = format_markdown(result)
  print(md)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
      f.write(md + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
