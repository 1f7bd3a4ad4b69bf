"""A run directory's safety: one trainer at a time, history that matches the
checkpoints, a clean stop on SIGTERM / SIGINT.

* `Lock`: ``<workdir>/lock.json`` names the host and process training there;
  a second trainer is refused, a lock left by a dead process on this host is
  taken over with a message.
* `reconcile_history`: on resume, the rows of ``metrics.jsonl`` after the
  restored step are dropped and TensorBoard is told to purge them (a
  ``SessionLog.START`` event); a directory with a training history but no
  checkpoint is refused instead of silently restarting over it.
* `StopSignals`: SIGTERM and SIGINT set a flag the loop checks after each
  step; it saves a checkpoint and stops (`Stopped`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import threading
import time

LOCK_FILE = "lock.json"
METRICS_FILE = "metrics.jsonl"


class WorkdirError(RuntimeError):
  """The run directory cannot be used as asked."""


class Stopped(Exception):  # pylint: disable=g-bad-exception-name
  """Training stopped on a signal after saving a checkpoint."""

  def __init__(self, signame: str, step: int, checkpoint_dir: str):
    self.signame, self.step = signame, step
    super().__init__(
        f"Stopped by {signame} after step {step}; its checkpoint is in "
        f"{checkpoint_dir}. The same command resumes the run.")


def prepare(workdir: str) -> None:
  """Creates ``workdir``; a clear error if the path is a file."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; "
                       "name a directory (it is created if missing).")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"Cannot create --workdir={workdir}: {e}") from e


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class Lock:
  """``with Lock(workdir):`` one trainer per run directory."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.taken_over: dict | None = None

  def _write(self) -> bool:
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(info, f)
    return True

  def __enter__(self):
    for _ in range(3):
      if self._write():
        return self
      try:
        with open(self.path, encoding="utf-8") as f:
          holder = json.load(f)
        host, pid = str(holder["host"]), int(holder["pid"])
      except (OSError, ValueError, KeyError, TypeError):
        holder, host, pid = {}, "", -1
      if host == socket.gethostname() and pid > 0 and _alive(pid):
        raise WorkdirError(
            f"Another trainer (process {pid} on this host, started "
            f"{holder.get('started', '?')}) is training in "
            f"{os.path.dirname(self.path)}; wait for it, stop it, or use "
            "another --workdir.")
      if host and host != socket.gethostname():
        raise WorkdirError(
            f"{self.path} says a trainer on host {host} (process {pid}, "
            f"started {holder.get('started', '?')}) is training here. If it "
            "is gone, delete that file and run again.")
      # Left by a dead process here (or unreadable): take it over.
      print(f"warning: taking over {self.path}, left by process {pid} "
            "which is no longer running.", flush=True)
      self.taken_over = holder
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    raise WorkdirError(f"Could not take the lock {self.path}.")

  def __exit__(self, *exc):
    with contextlib.suppress(OSError, ValueError, KeyError):
      with open(self.path, encoding="utf-8") as f:
        if int(json.load(f)["pid"]) == os.getpid():
          os.remove(self.path)
    return False


def _history_steps(path: str) -> list[int]:
  steps = []
  if not os.path.exists(path):
    return steps
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        steps.append(int(json.loads(line)["step"]))
      except (ValueError, KeyError, TypeError):
        continue
  return steps


def reconcile_history(workdir: str, restored_step: int | None) -> int:
  """Drops the history after ``restored_step``; returns the rows dropped.

  Raises:
    WorkdirError: the directory has a training history but no checkpoint
      (``restored_step`` None), so starting over would mix two runs.
  """
  path = os.path.join(workdir, METRICS_FILE)
  steps = _history_steps(path)
  if restored_step is None:
    if steps:
      raise WorkdirError(
          f"{workdir} holds the history of a run ({METRICS_FILE} up to step "
          f"{max(steps)}) but no checkpoint (checkpoints/ is missing or "
          "empty), so it cannot be resumed. Restore its checkpoints, or use "
          "a new --workdir (or move the old files away) to start over.")
    return 0
  dropped = sum(s > restored_step for s in steps)
  if dropped:
    keep = []
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          if int(json.loads(line)["step"]) > restored_step:
            continue
        except (ValueError, KeyError, TypeError):
          pass
        keep.append(line)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
    _purge_tensorboard(os.path.join(workdir, "tb"), restored_step + 1)
  return dropped


def _purge_tensorboard(logdir: str, step: int) -> None:
  """TensorBoard drops the events of steps >= ``step`` written before this
  (its 'purge orphaned data' rule: a ``SessionLog.START`` after the first is
  a restart; two are written, as the run's first may be missing)."""
  if not os.path.isdir(logdir):
    return
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
  created = time.time()
  writer = event_file_writer.EventFileWriter(logdir)
  for _ in range(2):
    writer.add_event(event_pb2.Event(
        step=step, wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
  writer.close()
  # TensorBoard reads a run's files in name order, and names start with the
  # creation time in whole seconds; the resumed run's writer, created in the
  # same second, could sort before this file (by its counter field), and its
  # new events would then be dropped as orphans. Let a second pass.
  time.sleep(max(0.0, math.floor(created) + 1 - time.time()))


class StopSignals:
  """``with StopSignals() as stop:`` then ``stop.signame`` once one came.

  Only in the main thread (signal handlers can only be set there); the
  previous handlers are restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signame: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signame is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.signame = signal.Signals(signum).name
    print(f"\n{self.signame}: finishing the current step, then saving a "
          "checkpoint and stopping.", flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
