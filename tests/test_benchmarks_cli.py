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
