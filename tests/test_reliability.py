"""What happens when things go wrong: each case a hostile tester tried.

A run's results are never overwritten with another run's; a damaged
checkpoint is skipped for an intact one; two trainers never share a
directory; a rejected config writes nothing; the history follows the
checkpoints; SIGTERM saves and stops; a changed batch size is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import test_train
from ocjax import run as run_lib
from ocjax.eval import runner
from ocjax.train import checkpoint as ckpt_lib
from ocjax.train import loop
from ocjax.train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Four steps with checkpoints at 2 and 4 (latest/4, periodic/2 and 4)."""
  workdir = str(tmp_path_factory.mktemp("reliability"))
  config = test_train.tiny_config(4)
  loop.train(config, workdir)
  return config, workdir


def _copy(trained, tmp_path, name="run"):
  config, workdir = trained
  dest = str(tmp_path / name)
  shutil.copytree(workdir, dest)
  return config, dest


def test_eval_refuses_another_models_config(trained, tmp_path):
  config, workdir = _copy(trained, tmp_path)
  runner.evaluate(workdir)
  path = os.path.join(workdir, "eval", "4.json")
  with open(path, encoding="utf-8") as f:
    before = f.read()
  other = test_train.tiny_config(4, **{"model.num_slots": 5})
  with pytest.raises(run_lib.ConfigMismatchError,
                     match=r"model\.num_slots: 3 -> 5"):
    runner.evaluate(workdir, config=other)
  with open(path, encoding="utf-8") as f:
    assert f.read() == before  # not overwritten
  # Evaluation settings may change.
  fewer = test_train.tiny_config(4, **{"eval.num_examples": 4})
  assert runner.evaluate(workdir, config=fewer)["num_images"] == 4


def _state_dirs(workdir):
  ck = os.path.join(workdir, "checkpoints")
  return {(kind, int(s)): os.path.join(ck, kind, s)
          for kind in ("latest", "periodic")
          for s in os.listdir(os.path.join(ck, kind)) if s.isdigit()}


def _largest_data_file(state_dir):
  files = []
  for root, _, names in os.walk(state_dir):
    files += [os.path.join(root, n) for n in names]
  return max(files, key=os.path.getsize)


def test_a_damaged_newest_checkpoint_falls_back(trained, tmp_path, capfd):
  config, workdir = _copy(trained, tmp_path)
  dirs = _state_dirs(workdir)
  assert set(dirs) == {("latest", 4), ("periodic", 2), ("periodic", 4)}
  # Both copies of step 4 damaged, differently.
  with open(_largest_data_file(os.path.join(dirs["latest", 4], "state")),
            "r+b") as f:
    f.truncate(100)
  shutil.rmtree(os.path.join(dirs["periodic", 4], "state"))
  run = run_lib.build(config)
  ck = run.checkpointer(workdir, read_only=True)
  state, meta = run.restore(ck)
  ck.close()
  assert int(state.step) == 2 and meta["step"] == 2
  err = capfd.readouterr().err
  warnings = [l for l in err.splitlines()
              if l.startswith("warning: skipping a damaged checkpoint")]
  assert len(warnings) == 2, err
  assert "latest/4/state" in warnings[0] and "array " in warnings[0]
  assert "periodic/4/state/_METADATA" in warnings[1]
  # The trainer resumes from the intact step 2, not from 0.
  loop.train(config, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir,
                                                      "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]


def test_damaged_checkpoint_errors_name_the_file(trained, tmp_path):
  config, workdir = _copy(trained, tmp_path)
  run = run_lib.build(config)
  for kind, step in _state_dirs(workdir):
    d = _state_dirs(workdir)[kind, step]
    with open(os.path.join(d, "state", "_METADATA"), "r+b") as f:
      f.truncate(50)
  ck = run.checkpointer(workdir, read_only=True)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    run.restore(ck)
  ck.close()
  assert "does not fit" not in str(e.value)
  assert str(e.value).count("_METADATA is unreadable") == 3
  assert "Nothing was restored" in str(e.value)
  # And the trainer does not start again from 0 over them.
  with pytest.raises(ckpt_lib.CheckpointError, match="damaged"):
    loop.train(config, workdir)


def test_a_corrupt_meta_file_is_named(trained, tmp_path, capfd):
  config, workdir = _copy(trained, tmp_path)
  for kind in ("latest", "periodic"):
    meta = os.path.join(_state_dirs(workdir)[kind, 4], "meta", "metadata")
    with open(meta, "w", encoding="utf-8") as f:
      f.write("{garbage")
  run = run_lib.build(config)
  ck = run.checkpointer(workdir, read_only=True)
  state, _ = run.restore(ck)
  ck.close()
  assert int(state.step) == 2
  err = capfd.readouterr().err
  assert err.count("4/meta/metadata is unreadable") == 2, err


def test_another_architecture_still_does_not_fit(trained):
  config, workdir = trained
  other = test_train.tiny_config(4, **{"model.feat_dim": 32})
  run = run_lib.build(other)
  ck = run.checkpointer(workdir, read_only=True)
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"does not fit.*saved \[.*\], this model \["):
    run.restore(ck)
  ck.close()
  del config


def test_one_trainer_per_workdir(tmp_path):
  workdir = str(tmp_path)
  lock = workdir_lib.Lock(workdir)
  with lock:
    with pytest.raises(workdir_lib.WorkdirError,
                       match="Another trainer .* on this host"):
      with workdir_lib.Lock(workdir):
        pass
  assert not os.path.exists(lock.path)  # released
  # A lock left by a dead process is taken over.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  import socket  # pylint: disable=g-import-not-at-top
  with open(lock.path, "w", encoding="utf-8") as f:
    json.dump({"host": socket.gethostname(), "pid": int(dead.stdout),
               "started": "then"}, f)
  with workdir_lib.Lock(workdir) as taken:
    assert taken.taken_over["pid"] == int(dead.stdout)
  # Another host's lock is not taken.
  with open(lock.path, "w", encoding="utf-8") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": "then"}, f)
  with pytest.raises(workdir_lib.WorkdirError, match="host elsewhere"):
    with workdir_lib.Lock(workdir):
      pass


@pytest.mark.parametrize("override,match", [
    ({"model.num_slots": 0}, "num_slots"),
    ({"optimizer.learning_rate": 0.0}, "learning_rate"),
    ({"train.grad_accum_steps": -1}, "grad_accum_steps"),
    ({"train.log_every": 0}, "log_every"),
    ({"train.checkpoint_every": 0}, "checkpoint_every"),
    ({"train.num_steps": 0}, "num_steps"),
    ({"data.image_size": 48}, "power of two"),
    ({"train.cache_inputs_max_gb": -1.0}, "cache_inputs_max_gb"),
])
def test_a_rejected_config_writes_nothing(tmp_path, override, match):
  workdir = str(tmp_path / "run")
  bad = test_train.tiny_config(4, **override)
  with pytest.raises(run_lib.ConfigError, match=match):
    loop.train(bad, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="is a file"):
    loop.train(test_train.tiny_config(2), str(path))


def test_history_follows_the_checkpoint(trained, tmp_path):
  config, workdir = _copy(trained, tmp_path)
  # As if killed after step 4's log but with step 2 the newest checkpoint.
  for (kind, step), d in _state_dirs(workdir).items():
    if step == 4:
      shutil.rmtree(d)
  cfg6 = test_train.tiny_config(6)
  loop.train(cfg6, workdir)
  steps = [json.loads(l)["step"]
           for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4, 5, 6]  # 3 and 4 once, from the second run
  # TensorBoard's own reader (the one its server uses) drops the orphans.
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tb"), purge_orphaned_data=True)
  acc.Reload()
  tb_steps = [e.step for e in acc.Tensors("loss")]
  assert sorted(tb_steps) == [1, 2, 3, 4, 5, 6], tb_steps
  del config


def test_the_purge_file_sorts_before_the_resumed_runs_events(tmp_path,
                                                            monkeypatch):
  """TensorBoard reads a run's event files in name order (creation second,
  host, pid, counter): the restart markers must come before the events the
  resumed run writes, or those are purged as orphans (seen under pytest-xdist,
  whose worker's writer counter sorted the other way)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
  logdir = str(tmp_path)
  # The purge writer's counter field "9..." sorts after TensorFlow's "1...".
  monkeypatch.setattr(event_file_writer, "_global_uid",
                      event_file_writer.AtomicCounter(9))
  workdir_lib._purge_tensorboard(logdir, 3)  # pylint: disable=protected-access
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default(step=3):
    tf.summary.scalar("loss", 1.0)
  writer.close()
  names = sorted(os.listdir(logdir))
  assert len(names) == 2
  first = list(event_file_loader.EventFileLoader(
      os.path.join(logdir, names[0])).Load())
  assert any(e.HasField("session_log") for e in first), names


def test_history_without_checkpoints_is_refused(trained, tmp_path):
  config, workdir = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  with pytest.raises(workdir_lib.WorkdirError,
                     match="history of a run .* no checkpoint"):
    loop.train(config, workdir)


def test_a_changed_batch_size_is_refused(trained, tmp_path):
  config, workdir = _copy(trained, tmp_path)
  bigger = test_train.tiny_config(6, **{"train.batch_size": 8})
  with pytest.raises(run_lib.ConfigError, match="trained with batch 4"):
    loop.train(bigger, workdir)
  del config


@pytest.mark.slow
def test_sigterm_saves_and_stops(tmp_path):
  """A SIGTERM during step 3: the step finishes, is saved, and training
  stops with a message; the same command resumes to the end."""
  workdir = str(tmp_path / "run")
  script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import test_train
from ocjax.train import loop, workdir as workdir_lib
config = test_train.tiny_config(8)
hook = loop.Hook(3, lambda run, state, step, info: os.kill(os.getpid(),
                                                           signal.SIGTERM))
try:
  loop.train(config, {workdir!r}, hooks=[hook] if len(sys.argv) > 1 else [])
except workdir_lib.Stopped as e:
  print("STOPPED", e.step, e)
  sys.exit(143)
print("FINISHED")
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.run([sys.executable, "-c", script, "signal"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 143, first.stderr[-3000:]
  assert "STOPPED 4" in first.stdout  # the hook ran after step 3's save;
  # the signal is seen after the next step, which is saved.
  assert "The same command resumes" in first.stdout
  assert "Traceback" not in first.stderr
  run = run_lib.build(test_train.tiny_config(8))
  ck = run.checkpointer(workdir, read_only=True)
  assert ck.latest_step() == 4
  ck.close()
  second = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 0 and "FINISHED" in second.stdout, (
      second.stderr[-3000:])
  assert "Resuming from the checkpoint of step 4" in second.stdout


def test_garbage_config_json_is_named(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(run_lib.ConfigError, match="config.json"):
    runner.evaluate(str(tmp_path))
  np.testing.assert_equal(os.listdir(tmp_path), ["config.json"])
