"""The notebooks run with the papermill command line alone, and carry the metadata papermill and JupyterLab read."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kdutils.paths import NOTEBOOKS_DIR, REPO_ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_metadata(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {"display_name": "kd-studies (.venv)", "language": "python",
                                      "name": "kd-studies"}
    info = nb.metadata.language_info
    assert info["name"] == "python" and info["pygments_lexer"] == "ipython3"
    assert info["codemirror_mode"] == {"name": "ipython", "version": 3} and info["file_extension"] == ".py"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.notebook
def test_papermill_command_line_alone(tmp_path):
    """`papermill IN OUT -p profile tiny -k kd-studies`, nothing of kdutils.runner in between."""
    papermill = Path(sys.executable).parent / "papermill"
    executable = str(papermill) if papermill.exists() else shutil.which("papermill")
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([executable, str(NOTEBOOKS_DIR / "04_tl_kd_shap.ipynb"), str(out), "-p", "profile", "tiny",
                           "-p", "output_dir", str(tmp_path / "results"), "-k", "kd-studies", "--cwd",
                           str(NOTEBOOKS_DIR)], check=False, capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = nbformat.read(out, as_version=4)
    assert executed.metadata.papermill.parameters == {"profile": "tiny", "output_dir": str(tmp_path / "results")}
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["profile"] == "tiny" and results["claims"]
