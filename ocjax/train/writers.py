"""Where training reports go: TensorBoard, a JSON-lines log and the console.

Only process 0 writes. ``<workdir>/metrics.jsonl`` has one JSON object per
log step (machine-readable); TensorBoard events go to ``<workdir>/tb``; with
``train.wandb_project`` set, the same scalars, images and the config also go
to Weights & Biases (imported only then; one W&B run per workdir, resumed
with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import numpy as np
from absl import logging


def wandb_settings(config: Any) -> dict[str, str] | None:
  """``train.wandb_project`` / ``wandb_mode`` of a config (None: off)."""
  tc = config.get("train", {}) if hasattr(config, "get") else {}
  project = str(tc.get("wandb_project", "") or "")
  if not project:
    return None
  # run.validate checked the mode (online or offline) and the import.
  return {"project": project,
          "mode": str(tc.get("wandb_mode", "online") or "online")}


_WANDB_RUNS: dict[str, Any] = {}


def _wandb_run(workdir: str, settings: dict[str, str], config: Any):
  """This process's W&B run of ``workdir`` (initialised once; its id is kept
  in ``<workdir>/wandb_id`` so a resumed training run continues it)."""
  key = os.path.abspath(workdir)
  if key in _WANDB_RUNS:
    return _WANDB_RUNS[key]
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "config.train.wandb_project is set but wandb is not installed: pip "
        "install wandb (or leave train.wandb_project empty).") from None
  id_file = os.path.join(workdir, "wandb_id")
  if os.path.exists(id_file):
    with open(id_file, encoding="utf-8") as f:
      run_id = f.read().strip()
  else:
    run_id = wandb.util.generate_id()
    with open(id_file, "w", encoding="utf-8") as f:
      f.write(run_id + "\n")
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
  run = wandb.init(project=settings["project"], mode=settings["mode"],
                   dir=workdir, id=run_id, resume="allow", config=cfg,
                   name=os.path.basename(key))
  _WANDB_RUNS[key] = run
  return run


def finish_wandb(workdir: str) -> None:
  """Ends this process's W&B run of ``workdir`` (if any)."""
  run = _WANDB_RUNS.pop(os.path.abspath(workdir), None)
  if run is not None:
    run.finish()


class Writer:
  """Scalars and images to TensorBoard and ``metrics.jsonl`` (and W&B when
  the config asks for it)."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               config: Any = None):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    self._wandb = None
    if not enabled:
      return
    settings = wandb_settings(config) if config is not None else None
    if settings:
      self._wandb = _wandb_run(workdir, settings, config)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a",
                       encoding="utf-8")
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.warning("TensorFlow is not installed: no TensorBoard events; "
                      "the scalars go to %s only.",
                      os.path.join(workdir, "metrics.jsonl"))
      return
    self._tf = tf
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      with self._tb.as_default(step=step):
        for k, v in scalars.items():
          self._tf.summary.scalar(k, float(v))
    self._jsonl.write(json.dumps(
        {"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log({k: float(v) for k, v in scalars.items()}, step=step)

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """``images[name]``: ``[H, W, 3]`` float in [0, 1] or uint8."""
    if self._wandb is not None:
      import wandb  # pylint: disable=g-import-not-at-top
      self._wandb.log({k: wandb.Image(np.asarray(v)) for k, v in
                       images.items()}, step=step)
    if self._tb is None:
      return
    with self._tb.as_default(step=step):
      for k, v in images.items():
        v = np.asarray(v)
        if v.dtype == np.uint8:
          v = v.astype(np.float32) / 255.0
        self._tf.summary.image(k, v[None], step=step, max_outputs=1)

  def text(self, step: int, texts: dict[str, str]) -> None:
    """Markdown texts in TensorBoard's Text tab (e.g. the run's config)."""
    if self._tb is None:
      return
    with self._tb.as_default(step=step):
      for k, v in texts.items():
        self._tf.summary.text(k, v)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


class Progress:
  """Steps per second, ETA and training time for the progress line.

  Time spent inside ``with progress.paused():`` (figures, checkpoints,
  evaluation) counts for none of them: they measure the training steps.
  """

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self._step0 = start_step
    self._paused = 0.0  # seconds paused so far
    self._t0 = self._clock()
    self._last_t = self._t0
    self._last_step = start_step

  def _clock(self) -> float:
    return time.monotonic() - self._paused

  @contextlib.contextmanager
  def paused(self):
    t = time.monotonic()
    try:
      yield
    finally:
      self._paused += time.monotonic() - t

  def rate(self, step: int) -> float:
    """Steps per second since the previous call."""
    now = self._clock()
    rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
    self._last_t, self._last_step = now, step
    return rate

  def elapsed(self) -> float:
    """Seconds of training since the start (this process), pauses left out."""
    return self._clock() - self._t0

  def eta_seconds(self, step: int) -> float:
    done = step - self._step0
    if done <= 0:
      return float("nan")
    return self.elapsed() / done * (self.total - step)


def parameter_table(params: Any, depth: int = 1) -> str:
  """Parameters per module (the first ``depth`` levels of the tree)."""
  import jax  # pylint: disable=g-import-not-at-top
  counts: dict[str, int] = {}
  shapes: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    key = "/".join(names[:depth]) if len(names) > depth else "/".join(
        names[:-1]) or names[0]
    counts[key] = counts.get(key, 0) + int(np.size(leaf))
    shapes[key] = shapes.get(key, 0) + 1
  total = sum(counts.values()) or 1
  width = max([len(k) for k in counts] + [6])
  lines = [f"{'module':{width}s} {'params':>12s} {'share':>7s} {'arrays':>7s}"]
  for k in sorted(counts, key=lambda k: -counts[k]):
    lines.append(f"{k:{width}s} {counts[k]:12,d} {counts[k] / total:7.1%} "
                 f"{shapes[k]:7d}")
  lines.append(f"{'total':{width}s} {total:12,d}")
  return "\n".join(lines)


def format_duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# Metrics the progress line leaves out (they are in TensorBoard).
_NOT_IN_PROGRESS = ("grad_norm", "param_norm", "steps_per_sec",
                    "learning_rate", "neg_elbo", "geco_err_ema")


def progress_line(step: int, total: int, metrics: dict[str, Any],
                  steps_per_sec: float, eta: float) -> str:
  """``step s/N | loss .. | <objective terms> | ... steps/s | ETA``."""
  keys = ["loss"] + sorted(k for k in metrics
                           if k != "loss" and k not in _NOT_IN_PROGRESS)
  parts = [f"step {step}/{total}"]
  for k in keys:
    if k in metrics:
      v = float(metrics[k])
      parts.append(f"{k} {v:.3g}" if k == "beta" or abs(v) < 10
                   else f"{k} {v:.1f}")
  parts.append(f"{steps_per_sec:.2f} steps/s")
  parts.append(f"ETA {format_duration(eta)}")
  return " | ".join(parts)


def log(msg: str, *args) -> None:
  """A console line from process 0 (stdout, timestamped), also to absl."""
  import jax  # pylint: disable=g-import-not-at-top
  text = msg % args if args else msg
  logging.info(text)
  if jax.process_index() == 0:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
