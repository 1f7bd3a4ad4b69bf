"""The quick-start notebook runs, cell by cell (so it cannot rot).

The code cells are executed in order in one namespace (no Jupyter needed),
with a minute model in a temporary workdir.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

NOTEBOOK = (pathlib.Path(__file__).resolve().parents[1] / "notebooks"
            / "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("OCJAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("OCJAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.chdir(NOTEBOOK.parents[1])
  cells = json.loads(NOTEBOOK.read_text())["cells"]
  code = [c for c in cells if c["cell_type"] == "code"]
  assert len(code) >= 4
  namespace: dict = {}
  for i, cell in enumerate(code):
    source = "".join(cell["source"])
    exec(compile(source, f"{NOTEBOOK.name}[{i}]", "exec"), namespace)  # pylint: disable=exec-used
  # What the cells promise: a restored run, a segmentation, the slot figure.
  assert int(namespace["state"].step) > 0
  assert namespace["summary"]["num_images"] == 1
  k = namespace["run"].config.model.num_slots
  assert namespace["masks"].shape[0] == k
  assert namespace["figure"].ndim == 3
  assert os.path.exists(os.path.join(namespace["out"], "overlay.png"))
