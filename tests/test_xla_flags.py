"""ocjax.xla_flags: XLA's own CPU convolutions instead of YNNPACK's."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocjax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles a 3x3 convolution and prints whether XLA gave it to YNNPACK, and
# XLA_FLAGS as the process saw it.
_PROBE = """
import os, sys, warnings
warnings.simplefilter("default")
if "--jax_first" in sys.argv:
  import jax, jax.numpy as jnp
  jnp.ones(1).block_until_ready()  # starts the CPU backend
import ocjax
import jax, jax.numpy as jnp
x, w = jnp.ones((4, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print("ynn" if "__ynn_fusion" in conv.lower(x, w).compile().as_text()
      else "eigen")
print(os.environ.get("XLA_FLAGS", ""))
"""


def _probe(*args, **env):
  environ = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "OCJAX_XLA_DEFAULTS")}
  environ.update(JAX_PLATFORMS="cpu", **env)
  r = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO,
                     env=environ, capture_output=True, text=True, timeout=120)
  return r


@pytest.mark.skipif(not xla_flags.CPU_FLAGS or not __import__(
    "jaxlib").__version__.startswith(xla_flags.CHECKED_JAXLIB),
                    reason="the flag is only set on checked jaxlib releases")
def test_import_ocjax_moves_cpu_convolutions_off_ynnpack():
  r = _probe()
  assert r.returncode == 0, r.stderr[-2000:]
  kind, flags = r.stdout.split("\n")[:2]
  assert kind == "eigen"
  assert flags == " ".join(xla_flags.CPU_FLAGS)
  # Kept apart from the user's own flags.
  r = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert r.stdout.split("\n")[1] == (
      "--xla_force_host_platform_device_count=2 "
      + " ".join(xla_flags.CPU_FLAGS))


def test_the_users_choice_wins():
  # The user's value of the flag is left as it is: YNNPACK again.
  r = _probe(XLA_FLAGS=f"--{xla_flags.YNN_FLAG}=individual_convolution")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split("\n")[:2] == [
      "ynn", f"--{xla_flags.YNN_FLAG}=individual_convolution"]
  r = _probe(OCJAX_XLA_DEFAULTS="0")
  assert r.stdout.split("\n")[:2] == ["ynn", ""]


def test_import_after_jax_started_warns():
  r = _probe("--jax_first")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split("\n")[:2] == ["ynn", ""]
  assert "import ocjax before running JAX code" in r.stderr


def test_this_test_process_runs_with_the_defaults():
  """The suite measures what users get: conftest imports ocjax first."""
  if __import__("jaxlib").__version__.startswith(xla_flags.CHECKED_JAXLIB):
    assert " ".join(xla_flags.CPU_FLAGS) in os.environ.get("XLA_FLAGS", "")


@pytest.mark.skipif(not xla_flags.applied,
                    reason="ocjax's flag is not set in this process")
def test_float64_compilations_get_ynnpack_convolutions_back():
  """Eigen has no float64 convolution; XLA's plain loop for one was 4x
  slower than YNNPACK's (module doc). float32 keeps the flag."""
  assert xla_flags.compiler_options(np.float32) == {}
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with jax.enable_x64(True):
    x = jnp.ones((4, 32, 32, 64), jnp.float64)
    w = jnp.ones((3, 3, 64, 64), jnp.float64)
    plain = jax.jit(conv).lower(x, w).compile().as_text()
    options = xla_flags.compiler_options(np.float64)
    assert options
    ynn = jax.jit(conv, compiler_options=options).lower(x, w).compile()
    assert "__ynn_fusion" not in plain
    assert "__ynn_fusion" in ynn.as_text()
    np.testing.assert_allclose(ynn(x, w), jax.jit(conv)(x, w), rtol=1e-12)


def test_model_options_only_where_ocjax_set_its_flags(monkeypatch):
  model = type("Model", (), {"xla_cpu_options": {xla_flags.YNN_FLAG: "x"}})
  monkeypatch.setattr(xla_flags, "applied", xla_flags.CPU_FLAGS)
  assert xla_flags.model_options(model) == {xla_flags.YNN_FLAG: "x"}
  assert xla_flags.model_options(object()) == {}  # declares none
  # The user's XLA_FLAGS named the flag (or another jaxlib): theirs wins.
  monkeypatch.setattr(xla_flags, "applied", ())
  assert xla_flags.model_options(model) == {}


@pytest.mark.skipif(not xla_flags.applied,
                    reason="ocjax's flag is not set in this process")
def test_a_models_options_reach_its_training_and_evaluation(monkeypatch):
  """A model's ``xla_cpu_options`` (here APEX's, without YNNPACK's reduce
  fusions, on the quickly compiled tiny Slot Attention) reach its training
  step and evaluation: fewer YNNPACK ops than without them, the same
  numbers."""
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  from ocjax.models import apex  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config = run_lib.load_experiment("experiments/slot_attention.py:tiny,smoke")

  def compiled():
    run = run_lib.build(config)
    state = run.init_state()
    batch = {k: jnp.asarray(v) for k, v in run.model.dummy_batch(2).items()}
    step = step_lib.make_train_step(run.model, run.objective, run.tx, seed=0)
    evaluate = run.apply_fn("eval")
    return (step.lower(state, batch).compile(),
            evaluate.lower(state.variables(), batch).compile(),
            evaluate(state.variables(), batch).recon)

  assert apex.Apex.xla_cpu_options
  model_class = type(run_lib.build(config).model)
  plain_step, plain_evaluate, plain_recon = compiled()
  monkeypatch.setattr(model_class, "xla_cpu_options",
                      apex.Apex.xla_cpu_options)
  step, evaluate, recon = compiled()
  # Functions that call the model inside their own jit (XLA takes compiler
  # options only at the top level) compile with them too.
  from ocjax import segment  # pylint: disable=g-import-not-at-top
  from ocjax.eval import runner  # pylint: disable=g-import-not-at-top
  run = run_lib.build(config)
  variables = run.init_state().variables()
  image = jnp.asarray(run.model.dummy_batch(2)["image"])
  mode = next(iter(run.model.eval_modes))
  scores, _ = runner.make_eval_fn(run, mode)(
      variables, {"image": image}, jnp.zeros(image.shape[:3], jnp.int32),
      num_true_labels=2)
  assert np.all(np.isfinite(scores["mse"]))
  assert segment.make_predict(run, mode)(variables, image)["masks"].shape[0] \
      == 2
  count = lambda c: c.as_text().count("__ynn_fusion")
  assert count(step) < count(plain_step)
  assert count(evaluate) < count(plain_evaluate)
  np.testing.assert_allclose(recon, plain_recon, rtol=1e-5, atol=1e-6)
