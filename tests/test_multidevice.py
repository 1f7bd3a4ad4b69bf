"""Data parallelism on 8 fake CPU devices, and two processes on loopback.

Each case runs tests/multidevice_worker.py in fresh interpreters with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the device count is
fixed when JAX starts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ocjax import run as run_lib

import multidevice_worker
import test_train

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "multidevice_worker.py")
pytestmark = [pytest.mark.multidevice, pytest.mark.slow]


def _env(num_devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(args, num_devices, timeout=600):
  r = subprocess.run([sys.executable, WORKER, *args], cwd=REPO,
                     env=_env(num_devices), capture_output=True, text=True,
                     timeout=timeout)
  assert r.returncode == 0, r.stderr[-4000:]
  return r


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_one_and_eight_devices_take_the_same_step(tmp_path):
  out = tmp_path / "devices.json"
  _run(["devices", str(out)], 8)
  r = json.loads(out.read_text())
  assert r["num_devices"] == 8
  np.testing.assert_allclose(r["losses_8"], r["losses_1"], rtol=1e-5)
  # Parameter updates (SGD) agree to float32 reduction-order noise: overall,
  # and leaf by leaf (looser: a leaf whose gradient nearly cancels has a
  # larger relative error).
  total, per_leaf = r["update_rel_diff"]
  assert total < 1e-4 and per_leaf < 1e-2, r
  assert r["beta_8"] == pytest.approx(r["beta_1"], rel=1e-6)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_two_processes_match_one_process_with_eight_devices(tmp_path):
  single = str(tmp_path / "single")
  _run(["train", single], 8)
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, "train", multi, str(i),
                             str(port)], cwd=REPO, env=_env(4),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-4000:]
  infos = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outs]
  assert sorted(i["process"] for i in infos) == [0, 1]
  assert all(i["processes"] == 2 and i["devices"] == 8 for i in infos)
  # Same global batches, same randomness: the same losses.
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  # Written once; restorable here, on one device.
  config = multidevice_worker.config()
  a, meta = test_train.restore_params(config, multi)
  b, _ = test_train.restore_params(config, single)
  assert int(a.step) == 2 and meta["data_position"] == 2
  params0 = run_lib.build(config).init_state().params
  total, per_leaf = multidevice_worker.update_rel_diff(a.params, b.params,
                                                      params0)
  assert total < 1e-4 and per_leaf < 1e-2, (total, per_leaf)
