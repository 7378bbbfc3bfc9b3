"""The overview notebook at the tiny profile."""

import json

import pytest

from kdutils import runner
from kdutils.cache import notebook_fingerprint
from kdutils.paths import NOTEBOOKS_DIR
from kdutils.session import claim


@pytest.mark.notebook
def test_overview_runs_at_tiny(tmp_path):
    runner.run(["00_overview"], "tiny", {}, output_root=tmp_path, progress=False)
    out = tmp_path / "00_overview"
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert results["profile"] == "tiny" and results["config"]["n_target_train"] == 300
    assert m["target_images"] == 300 and sum(m["images_per_class"].values()) == 300
    assert 30 < m["home_background_pct"]["measured"] < 80
    assert 1 < m["mask_area_pct_mean"] < 40
    assert m["studies_found"] == []  # no study ran into this output folder
    assert {c["verdict"] for c in results["claims"]} == {"not measured at this profile"}
    for name in ("synthworld_target_preview", "synthworld_source_preview", "synthworld_statistics"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    assert results["environment"]["libraries"]["torch"].startswith("2.")
    assert results["wall_time_s"] > 0


@pytest.mark.notebook
def test_overview_counts_current_results_only(tmp_path):
    """Planted study results: this profile and code count; another profile is shown as stale, not counted."""
    rows = [claim("KD beats TL", "+3.56", gains=[1.0, 1.2, 1.1], paper_size=3.56),
            claim("teacher beats random", "-", gains=[5.0, 6.0, 7.0], precondition=True)]
    for study, profile in (("04_tl_kd_shap", "tiny"), ("03_kassl", "small")):
        (tmp_path / study).mkdir()
        (tmp_path / study / "results.json").write_text(json.dumps(
            {"profile": profile, "code_fingerprint": notebook_fingerprint(NOTEBOOKS_DIR / f"{study}.ipynb"),
             "claims": rows, "wall_time_s": 1.0, "figures": []}))
    runner.run(["00_overview"], "tiny", {}, output_root=tmp_path, progress=False)
    m = json.loads((tmp_path / "00_overview" / "results.json").read_text())["metrics"]
    assert m["verdict_counts"]["reproduced"] == 1 and m["precondition_counts"]["reproduced"] == 1
    assert m["verdict_counts"]["not measured at this profile"] == 2  # studies 01 and 02 did not run
    assert list(m["stale"]) == ["03_kassl"] and "profile 'small'" in m["stale"]["03_kassl"]
