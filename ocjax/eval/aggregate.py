r"""Mean ± std over seeds: several runs' evaluations as the papers' tables.

    python -m ocjax.eval.aggregate DIR1 DIR2 ... [--step=S] \
        [--output=PREFIX] [--ddof=1]
    python -m ocjax.eval.aggregate --row=APEX=DIR1,DIR2 \
        --row="No entropy loss"=DIR3,DIR4 ... [--output=PREFIX]

Reads each run's ``DIR/eval/<step>.json`` (``--mode=eval``; the highest step
unless ``--step``) and, when present, ``DIR/eval/fid_<step>.json``
(``--mode=fid``), and writes ``PREFIX.md`` and ``PREFIX.json`` (default
``aggregate.md`` / ``.json`` in the working directory). The markdown holds

* a segmentation table shaped like paper 001's Tables 1-2: one row per
  evaluation mode (e.g. fixed / flexible K) and segmentation,
  columns ARI-FG, MSC-FG, ARI, MSC and the average number of slots used;
* for video models, a tracking table (APEX's Table II): MOTA, MOTP, Match,
  ID switches, false positives, misses, mostly detected / tracked;
* a table of the likelihood and generation figures: NLL, KL, MSE, FID.

With ``--row NAME=DIRS`` (repeated) it writes one comparison table instead,
a row per name (a model or an ablation over its seeds), as APEX's Tables
I-III: ARI-FG, MSC-FG, ARI, MSC and, for videos, the MOT scores.

Each cell is ``mean ± std`` over the runs (sample standard deviation,
``ddof=1``; 0 with one run). A metric missing from some runs is aggregated
over the runs that have it, and the cell says ``(n=..)``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np

SEG_COLUMNS = (("ari_fg", "ARI-FG"), ("msc_fg", "MSC-FG"), ("ari", "ARI"),
               ("msc", "MSC"), ("miou", "mIoU"))
# The MOT protocol of video models (`ocjax.eval.runner.MOT_SCORES`; APEX's
# Table II), keys ``<mode>/<segmentation>/mot_<score>``.
MOT_COLUMNS = (("mot_mota", "MOTA"), ("mot_motp", "MOTP"),
               ("mot_match", "Match"), ("mot_id_switches", "ID S."),
               ("mot_false_positives", "FPs"), ("mot_misses", "Miss"),
               ("mot_mostly_detected", "MD"), ("mot_mostly_tracked", "MT"))
# Loss terms (``loss_<term>``, named as the model names them) come first,
# then these.
OTHER_COLUMNS = (("mse", "MSE"), ("fid", "FID"))
_STEP_FILE = re.compile(r"^(\d+)\.json$")
_BOOKKEEPING = ("step", "num_images", "num_samples", "num_test",
                "train_seconds", "feature_dim", "seconds")


class AggregateError(ValueError):
  """A run directory has no (matching) evaluation results."""


def eval_steps(workdir: str) -> list[int]:
  """Steps with an ``eval/<step>.json``, ascending."""
  folder = os.path.join(workdir, "eval")
  if not os.path.isdir(folder):
    return []
  return sorted(int(m.group(1)) for m in map(_STEP_FILE.match,
                                             os.listdir(folder)) if m)


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise AggregateError(f"Cannot read {path}: {e}") from e
  if not isinstance(data, dict):
    raise AggregateError(f"{path} holds a {type(data).__name__}, not an "
                         "evaluation results object.")
  return data


def load_run(workdir: str, step: int | None = None) -> dict[str, Any]:
  """One run's results: ``{"workdir", "step", "files", "results"}``.

  ``results`` merges ``eval/<step>.json`` with ``eval/fid_<step>.json``
  (its ``fid`` entry) when that exists.
  """
  if not os.path.isdir(workdir):
    raise AggregateError(f"{workdir!r} is not a directory.")
  steps = eval_steps(workdir)
  if not steps:
    raise AggregateError(
        f"No evaluation results in {os.path.join(workdir, 'eval')} (expected "
        "<step>.json files written by `python -m ocjax.main --mode=eval`).")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise AggregateError(f"{workdir} has no evaluation of step {step}; it "
                         f"has steps {steps}.")
  path = os.path.join(workdir, "eval", f"{step}.json")
  results = dict(_read_json(path))
  files = [path]
  fid_path = os.path.join(workdir, "eval", f"fid_{step}.json")
  if os.path.exists(fid_path):
    fid = _read_json(fid_path)
    if "fid" in fid:
      results["fid"] = fid["fid"]
      results["fid_weights_check"] = fid.get("weights_check")
      files.append(fid_path)
  return {"workdir": workdir, "step": step, "files": files,
          "results": results}


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def aggregate(workdirs: Sequence[str], step: int | None = None,
              ddof: int = 1) -> dict[str, Any]:
  """Mean, std and values of every numeric metric over the runs."""
  if not workdirs:
    raise AggregateError("Name at least one run directory.")
  runs = [load_run(w, step) for w in workdirs]
  keys = sorted({k for r in runs for k, v in r["results"].items()
                 if _is_number(v) and k not in _BOOKKEEPING})
  metrics = {}
  for k in keys:
    values = [float(r["results"][k]) for r in runs
              if _is_number(r["results"].get(k))]
    arr = np.asarray(values, np.float64)
    std = float(np.std(arr, ddof=ddof)) if len(arr) > ddof else 0.0
    metrics[k] = {"mean": float(np.mean(arr)), "std": std, "n": len(arr),
                  "values": values}
  datasets = sorted({str(r["results"].get("dataset")) for r in runs})
  notes = []
  if len(datasets) > 1:
    notes.append(f"the runs are on different datasets: {datasets}")
  if len({r["step"] for r in runs}) > 1:
    notes.append("the runs are at different steps: "
                 + ", ".join(str(r["step"]) for r in runs))
  checks = {r["results"].get("fid_weights_check") for r in runs} - {None}
  if checks - {"verified"} and "fid" in metrics:
    notes.append("FID from weights not verified as pytorch-fid's file "
                 f"({sorted(checks)}); compare with published FIDs only "
                 "with the standard weights")
  return {
      "num_runs": len(runs), "std_ddof": ddof, "datasets": datasets,
      "runs": [{"workdir": r["workdir"], "step": r["step"],
                "files": r["files"],
                "num_images": r["results"].get("num_images")} for r in runs],
      "metrics": metrics, "notes": notes,
  }


def _fmt(key: str, m: dict[str, Any] | None, num_runs: int) -> str:
  if m is None:
    return "–"
  if key == "fid":
    digits = ".2f"
  elif key.endswith("num_slots"):
    digits = ".2f"
  elif key.startswith(("loss_", "mse")):
    digits = ".4g"
  elif "/mot_" in key:
    digits = ".1f"
  else:
    digits = ".3f"
  cell = f"{m['mean']:{digits}} ± {m['std']:{digits}}"
  if m["n"] != num_runs:
    cell += f" (n={m['n']})"
  return cell


def segmentation_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
  """(K mode, segmentation) pairs present, fixed before flexible."""
  pairs = {tuple(k.split("/")[:2]) for k in metrics if k.count("/") == 2}
  order = {"fixed": 0, "flexible": 1}
  return sorted(pairs, key=lambda p: (order.get(p[0], 2), p[0], p[1]))


def _seg_columns(metrics: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
  """`SEG_COLUMNS`, mIoU only where the results have it (image models since
  it joined the evaluation)."""
  has_miou = any(k.endswith("/miou") for k in metrics)
  return tuple(c for c in SEG_COLUMNS if c[0] != "miou" or has_miou)


def format_markdown(agg: dict[str, Any]) -> str:
  """The paper-shaped markdown tables of `aggregate`'s result."""
  m, n = agg["metrics"], agg["num_runs"]
  steps = sorted({r["step"] for r in agg["runs"]})
  lines = [f"Results over {n} run(s) ({', '.join(agg['datasets'])}; step "
           f"{', '.join(map(str, steps))}): mean ± std "
           f"(ddof={agg['std_ddof']}).", ""]
  rows = segmentation_rows(m)
  seg_columns = _seg_columns(m)
  if rows:
    head = ["K", "Masks"] + [name for _, name in seg_columns] + ["Avg. K"]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for mode, seg in rows:
      cells = [mode, seg]
      cells += [_fmt(s, m.get(f"{mode}/{seg}/{s}"), n)
                for s, _ in seg_columns]
      cells.append(_fmt(f"{mode}/num_slots", m.get(f"{mode}/num_slots"), n))
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  tracked = [r for r in rows if f"{r[0]}/{r[1]}/mot_mota" in m]
  if tracked:  # videos: the tracking table (APEX's Table II)
    head = ["K", "Masks"] + [name for _, name in MOT_COLUMNS]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for mode, seg in tracked:
      lines.append("| " + " | ".join(
          [mode, seg] + [_fmt(f"{mode}/{seg}/{s}", m.get(f"{mode}/{seg}/{s}"),
                              n) for s, _ in MOT_COLUMNS]) + " |")
    lines.append("")
  present = [(k, k[len("loss_"):].upper()) for k in sorted(m)
             if k.startswith("loss_")]
  present += [(k, name) for k, name in OTHER_COLUMNS if k in m]
  if present:
    lines += ["| " + " | ".join(name for _, name in present) + " |",
              "|" + "|".join(["---:"] * len(present)) + "|",
              "| " + " | ".join(_fmt(k, m[k], n) for k, _ in present)
              + " |", ""]
  lines += ["Runs:"] + [f"- {r['workdir']} (step {r['step']}, "
                        f"{r['num_images']} images)" for r in agg["runs"]]
  if agg["notes"]:
    lines += [""] + [f"Note: {x}." for x in agg["notes"]]
  return "\n".join(lines) + "\n"


def compare(groups: Sequence[tuple[str, Sequence[str]]],
            step: int | None = None, ddof: int = 1) -> dict[str, Any]:
  """`aggregate` of each named group of runs (a model or an ablation, its
  seeds): ``{"groups": [(name, aggregate)], ...}``."""
  if not groups:
    raise AggregateError("Name at least one group of runs.")
  return {"groups": [{"name": name, **aggregate(dirs, step, ddof)}
                     for name, dirs in groups]}


def format_comparison(result: dict[str, Any]) -> str:
  """One row per group, as APEX's Tables I-III: the segmentation scores of
  each group's first (mode, segmentation) and, for videos, the MOT scores;
  ``mean ± std`` over the group's runs."""
  groups = result["groups"]
  tracked = any(k.endswith("/mot_mota") for g in groups for k in g["metrics"])
  seg_columns = _seg_columns({k: 0 for g in groups for k in g["metrics"]})
  head = ["Model", "Runs"] + [name for _, name in seg_columns]
  if tracked:
    head += [name for _, name in MOT_COLUMNS]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
  for g in groups:
    m, n = g["metrics"], g["num_runs"]
    rows = segmentation_rows(m)
    prefix = "/".join(rows[0]) if rows else ""
    keys = [s for s, _ in seg_columns] + (
        [s for s, _ in MOT_COLUMNS] if tracked else [])
    cells = [g["name"], str(n)] + [_fmt(f"{prefix}/{k}",
                                        m.get(f"{prefix}/{k}"), n)
                                   for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  for g in groups:
    lines.append(f"- {g['name']}: " + ", ".join(
        f"{r['workdir']} (step {r['step']})" for r in g["runs"])
        + "".join(f"; note: {x}" for x in g["notes"]))
  return "\n".join(lines) + "\n"


def write(agg: dict[str, Any], prefix: str) -> tuple[str, str]:
  """Writes ``PREFIX.md`` and ``PREFIX.json``; returns their paths."""
  folder = os.path.dirname(os.path.abspath(prefix))
  os.makedirs(folder, exist_ok=True)
  md, js = prefix + ".md", prefix + ".json"
  with open(md, "w", encoding="utf-8") as f:
    f.write(format_comparison(agg) if "groups" in agg
            else format_markdown(agg))
  with open(js, "w", encoding="utf-8") as f:
    json.dump(agg, f, indent=2, sort_keys=True)
  return md, js


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ocjax.eval.aggregate",
      description="Mean ± std tables over several runs (seeds).")
  parser.add_argument("workdirs", nargs="*", metavar="DIR",
                      help="Run directories evaluated with --mode=eval.")
  parser.add_argument("--row", action="append", default=[],
                      metavar="NAME=DIR[,DIR...]",
                      help="A row of a comparison table (a model or an "
                      "ablation and its seeds); repeat for each row.")
  parser.add_argument("--step", type=int, default=None,
                      help="Evaluation step to use (default: each run's "
                      "latest).")
  parser.add_argument("--output", default="aggregate",
                      help="Output prefix: PREFIX.md and PREFIX.json.")
  parser.add_argument("--ddof", type=int, default=1,
                      help="Delta degrees of freedom of the std.")
  args = parser.parse_args(argv)
  try:
    if args.row:
      if args.workdirs:
        raise AggregateError("Give run directories or --row groups, not "
                             "both.")
      groups = []
      for row in args.row:
        name, sep, dirs = row.partition("=")
        if not sep or not name or not dirs:
          raise AggregateError(f"--row {row!r}: expected NAME=DIR[,DIR...].")
        groups.append((name, [d for d in dirs.split(",") if d]))
      agg = compare(groups, args.step, args.ddof)
    else:
      if not args.workdirs:
        raise AggregateError("Name at least one run directory (or --row).")
      agg = aggregate(args.workdirs, args.step, args.ddof)
  except AggregateError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  md, js = write(agg, args.output)
  print(format_comparison(agg) if "groups" in agg else format_markdown(agg))
  print(f"Wrote {md} and {js}.")
  return 0


def console() -> None:
  """The ``ocjax-aggregate`` console script."""
  sys.exit(main())


if __name__ == "__main__":
  sys.exit(main())
