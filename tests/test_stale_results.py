"""Results of another profile or of other code are stale: their verdicts must not be counted."""

import time

import nbformat
import pytest

from kdutils import cache, results
from kdutils.paths import REPO_ROOT, read_json
from kdutils.profiles import load_profile


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A notebook `99_fake` that imports kdutils.metrics, whose source is a copy we may edit."""
    monkeypatch.setattr(results, "NOTEBOOKS_DIR", tmp_path)
    metrics_copy = tmp_path / "metrics.py"
    metrics_copy.write_text((REPO_ROOT / "kdutils" / "metrics.py").read_text())
    real_source_file = cache._source_file
    monkeypatch.setattr(cache, "_source_file",
                        lambda name: metrics_copy if name == "kdutils.metrics" else real_source_file(name))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from kdutils import metrics\nx = 1  # the study")]
    nbformat.write(nb, tmp_path / "99_fake.ipynb")
    written = results.write_results(tmp_path / "out" / "results.json", notebook="99_fake", metrics={},
                                    config=load_profile("tiny").to_dict(), seeds=[0], started=time.time())
    return read_json(written), tmp_path, metrics_copy


def test_current_results_are_counted_and_another_profile_is_stale(study):
    data, _, _ = study
    assert data["code_fingerprint"] and results.staleness(data, "99_fake", "tiny") == ""
    assert results.staleness(data, "99_fake", "small") == "measured at profile 'tiny', not 'small'"


def test_a_changed_notebook_or_kdutils_module_makes_results_stale(study):
    data, folder, metrics_copy = study
    notebook = folder / "99_fake.ipynb"
    original = notebook.read_text()
    notebook.write_text(original.replace("x = 1  # the study", "x = 1  # a comment only"))
    assert results.staleness(data, "99_fake", "tiny") == ""  # comments do not count
    notebook.write_text(original.replace("x = 1", "x = 2"))
    assert "written by other code" in results.staleness(data, "99_fake", "tiny")
    notebook.write_text(original)
    metrics_copy.write_text(metrics_copy.read_text() + "\nCHANGED = True\n")  # a module the notebook uses
    assert "written by other code" in results.staleness(data, "99_fake", "tiny")


def test_results_without_a_fingerprint_are_stale(study):
    data, _, _ = study
    assert "written by other code" in results.staleness({**data, "code_fingerprint": None}, "99_fake", "tiny")
