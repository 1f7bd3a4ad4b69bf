"""The comparisons with official code say how to get it when it is absent."""

from __future__ import annotations

import json
import os
import re
import types

import numpy as np
import pytest

from benchmarks import vs_official
from benchmarks import vs_official_ast


@pytest.mark.parametrize("module, env, url", [
    (vs_official, "GENESIS_OFFICIAL", "applied-ai-lab/genesis"),
    (vs_official_ast, "AST_OFFICIAL", "BrunoSauvalle/AST"),
])
def test_without_official_code_returns_2_and_how_to(module, env, url,
                                                    monkeypatch, capsys,
                                                    tmp_path):
  monkeypatch.delenv(env, raising=False)
  assert module.main([]) == 2
  err = capsys.readouterr().err
  assert "git clone" in err and url in err and "pip install torch" in err
  # A directory without the official code.
  assert module.main([f"--official_dir={tmp_path}"]) == 2
  assert url in capsys.readouterr().err


@pytest.mark.parametrize("module", [vs_official, vs_official_ast])
def test_without_torch_returns_2_and_how_to(module, monkeypatch, capsys,
                                            tmp_path):
  # A directory that passes each script's check for the official code.
  (tmp_path / "models").mkdir()
  (tmp_path / "MF_models_encoder.py").write_text("")
  monkeypatch.setattr(vs_official, "import_torch", lambda threads=0: None)
  assert module.main([f"--official_dir={tmp_path}"]) == 2
  assert "pip install torch" in capsys.readouterr().err


def test_profile_ops_reports_modules_and_ops(capsys, tmp_path):
  """A traced step of a minute model: per-module times that add up to the
  total, and the top ops with the module that issued them."""
  from benchmarks import profile_ops  # pylint: disable=g-import-not-at-top
  assert profile_ops.main([
      "--config=experiments/genesis_v2.py:quick,tiny", "--batch=2",
      "--grad_accum=1",
      "--steps=1", "--top=3", f"--trace_dir={tmp_path}",
      "--config.model.num_slots=3"]) == 0
  out = capsys.readouterr().out
  total = float(out.split("XLA ops ")[1].split()[0])
  modules = out.split("per module and direction:")[1].split("top 3 ops:")[0]
  seconds = [float(line.split()[0]) for line in modules.strip().splitlines()]
  assert total > 0 and abs(sum(seconds) - total) <= 0.002 * len(seconds)
  assert "GenesisV2" in modules and (" fwd" in modules and " bwd" in modules)
  assert len(out.split("top 3 ops:")[1].strip().splitlines()) == 3


@pytest.mark.slow  # two compilations of the unrolled video model: ~150 s
def test_xla_options_ab_times_both_settings_of_a_video_model(capsys):
  """The A/B of two XLA settings compiles both (the reduce fusions bite:
  fewer YNNPACK ops without them) and times them alternately; a video
  model gets clips."""
  from benchmarks import xla_options_ab  # pylint: disable=g-import-not-at-top
  assert xla_options_ab.main([
      "--config=experiments/apex.py:quick,tiny", "--batch=1",
      "--rounds=1"]) == 0
  out = capsys.readouterr().out
  counts = [int(line.split(": ")[-1].split()[0])
            for line in out.splitlines() if "__ynn_fusion ops" in line]
  assert len(counts) == 2 and counts[0] > counts[1]
  assert "training step, batch 1, 1 alternating rounds" in out
  assert "B / A per round: median" in out


def test_profile_ops_names_a_bad_override():
  from benchmarks import profile_ops  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    profile_ops.main(["--config=experiments/genesis_v2.py", "model.x=1"])


def test_module_of_strips_transformations():
  from benchmarks import profile_ops  # pylint: disable=g-import-not-at-top
  name = ("jit(train_step)/transpose(jvp(AstSeg))/AstSeg.encode/"
          "unet/conv/conv_general_dilated")
  assert profile_ops.module_of(name) == "AstSeg.encode/unet bwd"
  assert profile_ops.module_of("jit(f)/closed_call/jvp(M)/M.a/dot_general",
                               depth=8) == "M.a fwd"


def _discovery_args(workdir, *extra):
  return ["--model=monet", "--preset=quick,tiny",
          "--dataset=tetrominoes_like", "--eval_every=2", "--eval_images=8",
          f"--workdir={workdir}", *extra]


@pytest.mark.slow
def test_discovery_curve_resumes_and_tabulates(tmp_path, capsys):
  """The curve command's rerun resumes the training run and keeps the curve
  it had; its table names when each threshold was (not) reached."""
  from benchmarks import discovery  # pylint: disable=g-import-not-at-top
  w = tmp_path / "monet"
  assert discovery.main(_discovery_args(
      w, "--minutes=30", "--config.train.num_steps=2")) == 0
  first = json.loads((w / "curve.json").read_text())
  assert first["dataset"] == "tetrominoes_like" and first["num_slots"] == 3
  assert [p["step"] for p in first["curve"]] == [2]
  eval_2 = (w / "eval" / "2.json").read_text()
  initial = (w / "eval" / "untrained.json").read_text()
  # Cut before the curve was written, then asked for more steps: the run
  # resumes from its checkpoint of step 2 (its evaluation is kept, not
  # redone) and the untrained scores are read back.
  (w / "curve.json").unlink()
  assert discovery.main(_discovery_args(
      w, "--minutes=30", "--config.train.num_steps=4")) == 0
  assert "Resuming from the checkpoint of step 2" in capsys.readouterr().out
  second = json.loads((w / "curve.json").read_text())
  assert [p["step"] for p in second["curve"]] == [2, 4]
  assert second["curve"][0] == first["curve"][0]
  assert (w / "eval" / "2.json").read_text() == eval_2
  assert (w / "eval" / "untrained.json").read_text() == initial
  assert second["curve"][1]["train_seconds"] >= first["curve"][0][
      "train_seconds"]
  md = (w / "discovery.md").read_text()
  row = next(line for line in md.splitlines() if line.startswith("| monet"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[:4] == ["monet", "tetrominoes_like", "3", "4"]
  reached = [p["ari_fg"] >= 0.8 for p in second["curve"]]
  assert (cells[7] == "not within 4 steps") == (not any(reached))


def test_discovery_skips_a_finished_run_and_moves_k_with_the_data(tmp_path,
                                                                  capsys):
  from benchmarks import discovery  # pylint: disable=g-import-not-at-top
  # K covers the preset's data (sprites: up to 5 objects, K = 6): the
  # background slot is kept on three tetrominoes; a smaller K is kept as is.
  quick = discovery.build_config("monet", "quick", "tetrominoes_like", 1, 1,
                                 8, {})
  assert quick.model.num_slots == 4 and quick.data.name == "tetrominoes_like"
  assert quick.model.image_size == quick.data.image_size == 32
  tiny = discovery.build_config("monet", "quick,tiny", "tetrominoes_like", 1,
                                1, 8, {})
  assert tiny.model.num_slots == 3
  # The DeepMind Tetrominoes preset (max_objects = -1: no limit) keeps K = 4.
  paper = discovery.build_config("slot_attention", "tetrominoes",
                                 "tetrominoes_like", 1, 1, 8, {})
  assert paper.model.num_slots == 4 and paper.data.name == "tetrominoes_like"
  # A finished run (its budget spent) is read back, not trained again.
  w = tmp_path / "run"
  w.mkdir()
  done = {"model": "monet", "dataset": "sprites", "minutes": 0.5,
          "num_slots": 6, "initial": {"ari_fg": 0.1},
          "curve": [{"step": 7, "train_seconds": 30.5, "ari_fg": 0.6,
                     "msc_fg": 0.5, "mse": 0.01}],
          "first_reach": {"0.5": {"step": 7, "train_seconds": 30.5},
                          "0.8": None}}
  (w / "curve.json").write_text(json.dumps(done))
  assert discovery.finished(str(w), 0.5) == done
  assert discovery.finished(str(w), 1.0) is None  # more minutes: continue
  assert discovery.main(["--model=monet", "--minutes=0.5",
                         f"--workdir={w}"]) == 0
  assert sorted(os.listdir(w)) == ["curve.json", "discovery.json",
                                   "discovery.md"]
  md = (w / "discovery.md").read_text()
  assert "| 7 (0.5 min) | not within 7 steps |" in md
  # A dataset that does not exist is named.
  with pytest.raises(SystemExit):
    discovery.main(["--model=monet", "--dataset=nope", f"--workdir={w}"])
  assert "--dataset: unknown dataset 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("module", [vs_official, vs_official_ast])
def test_vs_official_names_a_bad_precision_or_device(module, capsys):
  for bad in ("--precision=bf16", "--device=tpu"):
    with pytest.raises(SystemExit):
      module.main(["--official_dir=.", bad])
    assert "invalid choice" in capsys.readouterr().err


def test_vs_official_ast_phase_flags_name_what_they_apply_to(capsys):
  for bad, says in ((["--phase=2", "--inference"], "--phase=2 times a training"),
                    (["--given_background"], "--given_background applies to"),
                    (["--phase=1"], "invalid choice")):
    with pytest.raises(SystemExit):
      vs_official_ast.main(["--official_dir=.", *bad])
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("module", [vs_official, vs_official_ast])
def test_vs_official_on_cuda_without_a_gpu_says_so(module, monkeypatch,
                                                   capsys, tmp_path):
  """``--device=cuda`` where torch sees no GPU: exit 2 and the reason, before
  anything is built or timed."""
  (tmp_path / "models").mkdir()
  (tmp_path / "MF_models_encoder.py").write_text("")
  cpu_torch = types.SimpleNamespace(
      __version__="2.0+cpu",
      cuda=types.SimpleNamespace(is_available=lambda: False))
  monkeypatch.setattr(vs_official, "import_torch", lambda threads=0: cpu_torch)
  assert module.main([f"--official_dir={tmp_path}", "--device=cuda"]) == 2
  assert "--device=cuda: torch sees no CUDA device (torch 2.0+cpu)" in (
      capsys.readouterr().err)


def test_gpu_script_reads_the_trainers_log_lines():
  """Part 3's rates come from the trainer's own progress lines."""
  from benchmarks import gpu_genesis_v2  # pylint: disable=g-import-not-at-top
  from ocjax.train import writers  # pylint: disable=g-import-not-at-top
  lines = [f"[{t}] " + writers.progress_line(s, 500, {"loss": 1.0}, r, 9.0)
           for t, s, r in (("23:59:50", 1, 0.1), ("23:59:58", 21, 2.5),
                           ("00:00:06", 41, 2.5), ("00:00:10", 61, 5.0))]
  rates, overall = gpu_genesis_v2.parse_rates("\n".join(
      ["[23:59:40] Starting genesis_v2 from scratch", *lines, "done"]))
  assert rates == [2.5, 2.5, 5.0]  # the first line includes compilation
  assert overall == pytest.approx(60 / 20)  # across midnight


def test_gpu_script_curve_table_judges_against_the_other_seed():
  from benchmarks import gpu_genesis_v2  # pylint: disable=g-import-not-at-top
  base = np.linspace(2.0, 1.0, 40)
  rows = gpu_genesis_v2.curve_table({
      "float32": base, "float32, other seed": base + 0.1,
      "tf32": base + 0.05, "bfloat16": base + 0.3}, window=4)
  by_run = {r[:20].strip(): r for r in rows[1:]}
  assert by_run["tf32"].endswith("within noise")
  assert by_run["bfloat16"].endswith("BEYOND NOISE")
  mean, gap = map(float, by_run["bfloat16"][21:].split()[:2])
  assert gap == pytest.approx(0.3) and mean == pytest.approx(1.55, abs=0.02)
  assert not by_run["float32, other seed"].endswith("noise")


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_part(capsys, tmp_path):
  """The GPU script end to end on this machine's CPU with a minute model
  (no official checkout: part 1 says how to get one)."""
  from benchmarks import gpu_genesis_v2  # pylint: disable=g-import-not-at-top
  env_before = os.environ.get("GENESIS_OFFICIAL")
  os.environ.pop("GENESIS_OFFICIAL", None)
  try:
    assert gpu_genesis_v2.main([
        "--smoke", "--budget_s=1200", "--train_s=15",
        "--precisions=float32,bfloat16", f"--out={tmp_path}"]) == 0
  finally:
    if env_before is not None:
      os.environ["GENESIS_OFFICIAL"] = env_before
  out = capsys.readouterr().out
  assert "skipped: no --official_dir" in out and "git clone" in out
  table = out.split("largest gap to float32")[1].split("input pipeline")[0]
  rows = table.strip().splitlines()[1:]
  assert {r[:20].strip() for r in rows} == {
      "float32", "float32, other seed", "bfloat16"}
  for r in rows:
    assert np.all(np.isfinite([float(v) for v in r[21:].split()[:2]])), r
  assert float(out.split("input pipeline alone (batch 4): ")[1].split()[0]) > 0
  training = out.split("training: ")[1]
  assert float(training.split()[0]) > 0 and "images/s" in training
  assert "the paper's 500,000 steps at this rate" in out


def test_step_times_times_each_batch_size(capsys):
  from benchmarks import step_times  # pylint: disable=g-import-not-at-top
  assert step_times.main(["--config=experiments/slot_attention.py:tiny,smoke",
                          "--batch=4,2", "--rounds=2"]) == 0
  out = capsys.readouterr().out
  assert "batch 4: median" in out and "batch 2: median" in out
  assert "1.00x the first's time" in out


@pytest.mark.slow
def test_step_times_starts_each_train_step_counter(capsys):
  from benchmarks import step_times  # pylint: disable=g-import-not-at-top
  assert step_times.main(["--config=experiments/ast_seg.py:quick,tiny",
                          "--batch=2", "--rounds=1",
                          "--train_steps=0,30000"]) == 0
  out = capsys.readouterr().out
  assert "batch 2, step 0: median" in out  # BT: no stages
  assert "batch 2, step 30000: median" in out
  # The curriculum's two stages, each also without its stage.
  assert step_times.main([
      "--config=experiments/ast_seg.py:quick,tiny", "--batch=2",
      "--rounds=1", "--train_steps=0,30000", "--without_stages",
      "--config.model.background_training=\"curriculum\""]) == 0
  out = capsys.readouterr().out
  for name in ("step 0, stage 0", "step 0", "step 30000, stage 1",
               "step 30000"):
    assert f"batch 2, {name}: median" in out, name
  # Phase 2 freezes the autoencoder: also timed with it updated.
  assert step_times.main([
      "--config=experiments/ast_seg.py:quick,tiny", "--batch=2",
      "--rounds=1", "--train_steps=0,30000", "--without_frozen",
      "--config.model.background_training=\"curriculum\""]) == 0
  out = capsys.readouterr().out
  assert "batch 2, step 0, stage 0, frozen parameters updated: median" in out
  assert "step 30000, stage 1, frozen" not in out


@pytest.mark.parametrize(
    "step", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_transposed_convs_times_both_forms(capsys, step):
  from benchmarks import transposed_convs  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = run_lib.load_experiment("experiments/ast_seg.py:quick,tiny")
  calls = transposed_convs.record_calls(config, 2)
  # The background generator's (col2im on CPU) and the U-Net's or the
  # glimpse generator's (subpixel) transposed convolutions.
  assert {c["form"] for c in calls} == {"col2im", "subpixel"}
  assert all(c["x"][0] >= 2 for c in calls)
  argv = ["--config=experiments/ast_seg.py:quick,tiny", "--batch=2",
          "--rounds=1", "--layers=2"] + (["--step"] if step else [])
  assert transposed_convs.main(argv) == 0
  out = capsys.readouterr().out
  assert "distinct transposed convolutions" in out and "col2im/sub" in out
  assert "the model's forms" in out
  if step:
    assert "subpixel: " in out and "col2im: " in out and "model: " in out


@pytest.mark.parametrize(
    "grad", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_conv_layers_times_each_convolution_of_a_model(capsys, grad):
  from benchmarks import conv_layers  # pylint: disable=g-import-not-at-top
  calls = conv_layers.record_convolutions(
      "experiments/ast_seg.py:quick,tiny", 2)
  # The U-Net's convolutions, among them a small map's (a matmul on CPU).
  assert len(calls) >= 4 and all(c["x"][0] >= 2 for c in calls)
  assert any(conv_layers.small_map(c) for c in calls)
  small = next(i for i, c in enumerate(calls) if conv_layers.small_map(c))
  argv = ["--config=experiments/ast_seg.py:quick,tiny", "--batch=2",
          "--rounds=1", f"--layers={small + 1}"] + (["--grad"] if grad else [])
  assert conv_layers.main(argv) == 0
  out = capsys.readouterr().out
  assert "distinct convolutions" in out and "matmul/xla" in out
  assert "the faster of the two per layer" in out
  rows = [l for l in out.splitlines() if l.strip().startswith("(2,")]
  used = re.search(r"\)\s+\d+\s+(xla|matmul)\s", rows[-1])
  assert used and used.group(1) == "matmul", rows  # the small map's


def test_conv_layers_beside_torch(capsys):
  """``--torch``: PyTorch's conv2d of the same shapes (its forward equal to
  ours, padding asymmetric or not) timed beside ours."""
  pytest.importorskip("torch")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import conv_layers  # pylint: disable=g-import-not-at-top
  from ocjax.nn import conv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.random((2, 7, 6, 3), np.float32)
  k = rng.random((3, 3, 3, 4), np.float32)
  for padding, strides in ((((1, 1), (1, 1)), (1, 1)),
                           (((0, 1), (1, 0)), (2, 2))):
    call = dict(padding=padding, strides=strides)
    for grad in (False, True):
      out = conv_layers.torch_candidate(call, grad, x, k)()
      if grad:  # d sum(y^2) / d kernel, [C_out, C_in, kh, kw]
        ours = jax.grad(lambda k: jnp.sum(conv.conv2d(  # pylint: disable=cell-var-from-loop
            jnp.asarray(x), k, padding, strides) ** 2))(jnp.asarray(k))
        np.testing.assert_allclose(out.numpy().transpose(2, 3, 1, 0), ours,
                                   rtol=1e-4)
      else:
        ours = conv.conv2d(jnp.asarray(x), jnp.asarray(k), padding, strides)
        np.testing.assert_allclose(out.numpy().transpose(0, 2, 3, 1), ours,
                                   rtol=1e-5, atol=1e-5)
  assert conv_layers.main(["--config=experiments/ast_seg.py:quick,tiny",
                           "--batch=2", "--rounds=1", "--layers=2",
                           "--torch"]) == 0
  out = capsys.readouterr().out
  assert "model/torch" in out and ", PyTorch " in out


@pytest.mark.slow
def test_input_cache_times_the_trainer_with_and_without(capsys):
  from benchmarks import input_cache as bench  # pylint: disable=g-import-not-at-top
  from ocjax.train import input_cache  # pylint: disable=g-import-not-at-top
  fill = input_cache.InputCache.fill
  assert bench.main(["--config=experiments/ast_seg.py:paper,tiny",
                     "--num_train=8", "--batch=4", "--steps=4",
                     "--rounds=1",
                     '--config.model.background_training="frozen"']) == 0
  out = capsys.readouterr().out
  assert "cache_inputs=True:" in out and "cache_inputs=False:" in out
  assert "cache build (ordered pass over 8 examples)" in out
  assert "batch look-up" in out
  assert input_cache.InputCache.fill is fill  # put back
