"""The object-arrangement task of APEX (paper 000, Sec. IV-C, Table IV).

A trained model parses the goal image and the current scene of each
simulated scenario (`data_pipelines.p2d_arrange`): its slot masks select the
depth image's 3D points of each object, its slot presence discards empty
slots and its slot appearance (APEX: ``z_what``) matches current objects to
goal objects by the smallest L2 distance; a heuristic pick-and-place policy
then moves them. The score is the mean distance (metres) of the final object
positions to the goal positions, 1 m for an object off the table, for tasks
of 2, 3 and 4 objects over 150 scenarios each (Table IV's shape):

    python -m ocjax.eval.arrangement --workdir=runs/apex --objects=2,3,4 \\
        --scenarios=150 [--out=DIR]

``--perception=oracle`` parses with the simulator's true masks and
identities instead (no model: the policy's own error); ``--workdir`` is then
optional. The model must expose ``aux["appearance"]`` ``[B, (T,) N, L]`` for
its first N slots (the rest of its masks are background) and may expose
``aux["presence"]`` ``[B, (T,) N]``; a video model sees the image as a clip
of ``--frames`` copies and is read at the last frame. Results go to
``OUT/arrangement.json`` and ``.md``; each finished scenario is appended to
``OUT/scenarios_<n>.jsonl`` first, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

from data_pipelines import p2d
from data_pipelines import p2d_arrange as arrange

Perceive = Callable[[dict[str, np.ndarray]], list[arrange.Detection]]


class ArrangementError(RuntimeError):
  """The run or the arguments cannot be used for the task."""


def model_perception(run, state, *, frames: int = 3,
                     presence_threshold: float = 0.5,
                     eval_mode: str | None = None) -> Perceive:
  """Parses a rendered view with a trained run (module doc)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  model = run.model
  mode = eval_mode or list(model.eval_modes)[0]
  apply = run.model_fn("eval", mode)
  key = model.input_key
  video = key == "video"
  size = int(model.dummy_batch(1)[key].shape[-2])
  variables = state.variables()

  @run.jit
  def parse(image):  # [H, W, 3] in [0, 1]
    x = (jnp.broadcast_to(image, (1, frames) + image.shape) if video
         else image[None])
    out = apply(variables, {key: x})
    if "appearance" not in out.aux:
      raise ArrangementError(
          f"Model {type(model).__name__} does not expose aux['appearance'] "
          "(per-slot appearance vectors), which the arrangement task "
          "matches objects by.")
    pick = (lambda v: v[0, -1]) if video else (lambda v: v[0])
    app = pick(out.aux["appearance"])  # [N, L]
    pres = (pick(out.aux["presence"]) if "presence" in out.aux
            else jnp.ones(app.shape[:1]))
    labels = jnp.argmax(pick(out.masks)[..., 0], axis=0)  # [H, W]
    return labels, app, pres

  def perceive(view):
    image = view["image"]
    if image.shape[0] != size:
      raise ArrangementError(f"The scene renders {image.shape[0]} px but the "
                             f"model takes {size} px.")
    labels, app, pres = jax.device_get(parse(
        jnp.asarray(image, jnp.float32) / 255.0))
    apps = {k: app[k] for k in range(app.shape[0])
            if pres[k] > presence_threshold}
    return arrange.object_states(np.asarray(labels), view["points"], apps)

  return perceive


def summarise(distances: Sequence[np.ndarray]) -> dict[str, float]:
  """Mean and standard deviation over all objects of all scenarios, and the
  standard deviation of the scenarios' means."""
  flat = np.concatenate([np.asarray(d, np.float64) for d in distances])
  per = np.array([np.mean(d) for d in distances])
  return {"mean": float(flat.mean()), "std": float(flat.std()),
          "scenario_std": float(per.std()), "scenarios": len(distances),
          "off_table": int(np.sum(flat >= arrange.OFF_TABLE_PENALTY))}


def _read_done(path: str, tag: dict[str, Any]) -> dict[int, dict[str, Any]]:
  """Finished scenarios of this task (records of other settings: redone)."""
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:  # a line cut by a kill is dropped and redone
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue
          if all(rec.get(k) == v for k, v in tag.items()):
            done[int(rec["index"])] = rec
  return done


def run_task(spec: arrange.TaskSpec, perceive: Perceive, num: int,
             log_path: str, *, figures: str = "",
             progress: bool = True) -> dict[str, Any]:
  """``num`` scenarios of one task, resuming from ``log_path``."""
  tag = {"group": list(spec.group), "seed": spec.seed,
         "image_size": spec.image_size}
  done = _read_done(log_path, tag)
  cut = False
  if os.path.exists(log_path) and os.path.getsize(log_path):
    with open(log_path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      cut = f.read(1) != b"\n"
  with open(log_path, "a") as log:
    if cut:  # a killed run's partial last line ends here
      log.write("\n")
    for i in range(num):
      if i in done:
        continue
      r = arrange.run_scenario(spec, i, perceive)
      rec = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
             for k, v in r.items() if not k.endswith("_image")}
      rec.update(tag, index=i)
      log.write(json.dumps(rec) + "\n")
      log.flush()
      done[i] = rec
      if figures and i < 4:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        os.makedirs(figures, exist_ok=True)
        Image.fromarray(np.concatenate([r["goal_image"], r["start_image"]],
                                       1)).save(os.path.join(
                                           figures, f"n{len(spec.group)}_"
                                           f"{i:03d}_goal_start.png"))
      if progress:
        print(f"[{len(spec.group)} objects] scenario {i + 1}/{num}: "
              f"distance {np.mean(rec['distances']):.3f} m", flush=True)
  recs = [done[i] for i in range(num)]
  out = summarise([np.asarray(r["distances"]) for r in recs])
  out["start"] = summarise([np.asarray(r["start_distances"]) for r in recs])
  for k in ("detected_goal", "detected_start", "matched", "moves", "parked",
            "missed_grasps"):
    out[k] = float(np.mean([r[k] for r in recs]))
  return out


def format_table(results: dict[str, Any], name: str) -> str:
  ns = sorted(results["tasks"], key=int)
  head = " | ".join(f"{n} objects" for n in ns)
  lines = ["| method | " + head + " |",
           "| --- |" + " --- |" * len(ns),
           f"| {name} | " + " | ".join(
               f"{results['tasks'][n]['mean']:.2f} ± "
               f"{results['tasks'][n]['std']:.2f}" for n in ns) + " |",
           "| (start, no move) | " + " | ".join(
               f"{results['tasks'][n]['start']['mean']:.2f} ± "
               f"{results['tasks'][n]['start']['std']:.2f}" for n in ns)
           + " |"]
  return "\n".join(lines)


def evaluate(*, workdir: str = "", out: str = "", objects=(2, 3, 4),
             scenarios: int = 150, perception: str = "model",
             group: Sequence[str] = arrange.DEFAULT_GROUP, frames: int = 3,
             presence_threshold: float = 0.5, image_size: int = 128,
             step: int | None = None, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
  """Table IV for one run (module doc); returns and writes the results."""
  if perception not in ("model", "oracle"):
    raise ArrangementError(f"--perception={perception!r}; expected 'model' "
                           "or 'oracle'.")
  if max(objects) > len(group) or min(objects) < 1:
    raise ArrangementError(f"--objects={list(objects)} needs 1 to "
                           f"{len(group)} objects (the group {list(group)}).")
  if scenarios < 1:
    raise ArrangementError(f"--scenarios={scenarios}; expected >= 1.")
  if perception == "model":
    if not workdir:
      raise ArrangementError("--workdir is required with --perception=model.")
    from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
    run, state = run_lib.restore(workdir, step)
    data = run.config.data
    if data.get("name") != p2d.NAME:
      raise ArrangementError(
          f"The run in {workdir} was trained on {data.get('name')!r}; the "
          f"task simulates the P2D-like scene ('{p2d.NAME}').")
    perceive = model_perception(run, state, frames=frames,
                                presence_threshold=presence_threshold)
    name = f"{run.config.model.name} (step {int(state.step)})"
  else:
    data = p2d.default_config()
    data.image_size = image_size
    perceive = arrange.oracle_perception
    name = "oracle perception"
  out = out or (os.path.join(workdir, "arrangement", perception) if workdir
                else os.path.join("runs", "arrangement", perception))
  os.makedirs(out, exist_ok=True)
  results = {"name": name, "perception": perception, "workdir": workdir,
             "group": list(group), "scenarios": scenarios, "tasks": {}}
  for n in objects:
    spec = arrange.TaskSpec.from_config(data, group[:n], seed=seed)
    results["tasks"][str(n)] = run_task(
        spec, perceive, scenarios, os.path.join(out, f"scenarios_{n}.jsonl"),
        figures=os.path.join(out, "figures"), progress=progress)
  table = format_table(results, name)
  tmp = os.path.join(out, "arrangement.json.tmp")
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, os.path.join(out, "arrangement.json"))
  with open(os.path.join(out, "arrangement.md"), "w") as f:
    f.write("Mean ± std of the object distance to the goal positions (m), "
            f"{scenarios} scenarios per task.\n\n" + table + "\n")
  results["table"] = table
  results["out"] = out
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="", help="A trained p2d run.")
  parser.add_argument("--out", default="", help="Output folder (default "
                      "WORKDIR/arrangement/<perception>).")
  parser.add_argument("--objects", default="2,3,4",
                      help="Tasks: numbers of objects, comma-separated.")
  parser.add_argument("--scenarios", type=int, default=150)
  parser.add_argument("--perception", default="model",
                      choices=("model", "oracle"))
  parser.add_argument("--group", default=",".join(arrange.DEFAULT_GROUP),
                      help="Object kinds; a task of n uses the first n.")
  parser.add_argument("--frames", type=int, default=3,
                      help="Video models: the image as a clip of this many.")
  parser.add_argument("--presence_threshold", type=float, default=0.5)
  parser.add_argument("--image_size", type=int, default=128,
                      help="Oracle perception: the camera's resolution.")
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    objects = tuple(int(v) for v in args.objects.split(",") if v)
  except ValueError:
    print(f"--objects={args.objects!r}: expected integers like 2,3,4.",
          file=sys.stderr)
    return 2
  try:
    res = evaluate(workdir=args.workdir, out=args.out, objects=objects,
                   scenarios=args.scenarios, perception=args.perception,
                   group=tuple(g for g in args.group.split(",") if g),
                   frames=args.frames,
                   presence_threshold=args.presence_threshold,
                   image_size=args.image_size, step=args.step,
                   seed=args.seed)
  except (ArrangementError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(res["table"])
  print(f"Wrote {res['out']}/arrangement.json and .md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
