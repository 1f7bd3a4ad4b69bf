"""The comparisons with official code say how to get it when it is absent."""

from __future__ import annotations

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
