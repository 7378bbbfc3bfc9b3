"""The overview notebook at the tiny profile."""

import json

import pytest

from kdutils import runner


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
