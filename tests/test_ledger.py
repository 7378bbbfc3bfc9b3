"""The claim ledger: one verdict rule over seeds (each verdict word constructed), the overview's table, the README."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from kdutils import runner
from kdutils.cache import notebook_fingerprint
from kdutils.ledger import README_END, README_START, collect, counts, markdown, write_readme
from kdutils.paths import FIGURES_DIR, NOTEBOOKS_DIR, REPO_ROOT
from kdutils.session import claim
from kdutils.stats import VERDICTS, paired_verdict


def test_interval_is_the_t_interval_over_seeds():
    gains = [1.0, 2.0, 4.0]
    v = paired_verdict(gains)
    half = sps.t.ppf(0.975, 2) * np.std(gains, ddof=1) / math.sqrt(3)
    assert v.mean == pytest.approx(7 / 3) and v.std == pytest.approx(np.std(gains, ddof=1))
    assert (v.low, v.high) == pytest.approx((7 / 3 - half, 7 / 3 + half)) and v.n == 3


@pytest.mark.parametrize("gains, word", [
    ([1.2, 0.8, 1.0], "reproduced"),             # interval above zero
    ([-1.2, -0.8, -1.0], "not reproduced"),      # interval below zero
    ([0.5, -0.4, 0.1], "within noise"),          # interval contains zero
    ([1.35, 0.2, 2.9], "within noise"),          # positive mean, but the seed spread is larger
    ([3.0], "within noise"),                     # one seed cannot separate a gain from noise
    ([0.5, 0.5, 0.5], "within noise"),           # the seeds did not vary the gain: one replicate
    ([-2.0, -2.0], "within noise"),
    ([0.1, 0.1, 0.1], "within noise"),           # identical, though their float mean is not exactly 0.1
    ([0.7, 0.7, 0.7], "within noise"),
])
def test_each_verdict_word(gains, word):
    assert paired_verdict(gains).name == word


def test_identical_gains_have_no_interval(tmp_path):
    """Seeds that all give the same gain measured no spread: the interval is unbounded, as with one seed."""
    v = paired_verdict([1.0, 1.0, 1.0])
    assert (v.low, v.high, v.std, v.n) == (-math.inf, math.inf, 0.0, 3) and not v.contains(math.nan)
    assert paired_verdict([1.0, 1.0, 1.0 + 1e-6]).name == "reproduced"  # a measured spread, however small
    assert paired_verdict([1e-12, 1e-12, 1.000001e-12]).name == "reproduced"  # the same at any scale
    row = claim("fewer epochs", "-", gains=[1.0, 1.0, 1.0], paper_size=1.0)
    assert row["verdict"] == "within noise" and row["measured"].endswith("(no spread over seeds: no interval)")
    assert row["paper_inside"] is None  # no interval for the paper's size to lie in
    _plant(tmp_path, "04_tl_kd_shap", "tiny", notebook_fingerprint(NOTEBOOKS_DIR / "04_tl_kd_shap.ipynb"), [row])
    assert "| (no spread over seeds: no interval) |" in markdown(collect(tmp_path, ["04_tl_kd_shap"], "tiny"))


def test_verdict_is_scale_free():
    gains = np.array([0.3, 1.1, 0.6, -0.1])
    base = paired_verdict(gains)
    for scale in (1e-3, 0.909, 7.0):
        scaled = paired_verdict(scale * gains)
        assert scaled.name == base.name
        assert (scaled.low, scaled.high) == pytest.approx((scale * base.low, scale * base.high))


def test_bad_gains_fail_loudly():
    with pytest.raises(ValueError, match="at least one"):
        paired_verdict([])
    with pytest.raises(ValueError, match="NaN"):
        paired_verdict([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        paired_verdict([1.0, 2.0], confidence=1.5)


def test_claim_row_from_seeds_with_paper_size():
    row = claim("KD beats TL", "+3.56", "85.1 -> 86.2", gains=[0.9, 1.4, 1.1], paper_size=3.56, unit=" pts")
    assert row["value"] == "85.1 -> 86.2" and row["measured"].startswith("85.1 -> 86.2; +1.13 +- 0.25 pts")
    assert row["verdict"] == "reproduced" and row["basis"] == "seeds" and row["kind"] == "claim"
    assert row["ours"]["per_seed"] == [0.9, 1.4, 1.1] and row["ours"]["n"] == 3
    assert row["paper_inside"] is False  # +3.56 lies far above our interval
    assert "95% CI" in row["measured"] and "(n = 3)" in row["measured"]
    inside = claim("KD beats TL", "+1.1", gains=[0.9, 1.4, 1.1], paper_size=1.1)
    assert inside["paper_inside"] is True


def test_claim_rows_without_seeds_and_preconditions():
    assert claim("x", "y", "no masks", None)["verdict"] == "not measured at this profile"
    one = claim("x", "y", "a > b", True)
    assert one["verdict"] == "reproduced" and one["basis"] == "one comparison" and one["interval"] is None
    assert claim("teacher beats random", "-", gains=[5, 6, 7], precondition=True)["kind"] == "precondition"
    assert {claim("x", "y", gains=g)["verdict"] for g in ([1, 1.1, 1.2], [-1, -1.1, -1.2], [1, -1, 0.5])} \
        | {claim("x", "y", "-", None)["verdict"]} == set(VERDICTS)


def test_tiny_and_dry_runs_judge_claims_but_report_them_not_measured():
    from kdutils.profiles import load_profile
    from kdutils.session import claims_for

    assert claims_for(load_profile("small")) is claim
    for cfg in (load_profile("tiny"), load_profile("small", dry_run=True)):
        at = claims_for(cfg)
        row = at("KD beats TL", "+3.56", gains=[-0.9, -1.4, -1.1], paper_size=3.56)
        assert row["verdict"] == "not measured at this profile" and row["verdict_if_measured"] == "not reproduced"
        assert row["ours"]["per_seed"] == [-0.9, -1.4, -1.1] and row["paper_inside"] is None
        assert at("x", "y", "a > b", True)["verdict_if_measured"] == "reproduced"
        assert at("teacher beats random", "-", gains=[5, 6, 7], precondition=True)["verdict"] == "reproduced"
        assert "verdict_if_measured" not in at("x", "y", "no masks", None)


# ------------------------------------------------------------------ the overview's ledger and the README

def _plant(root, study, profile, fingerprint, claims):
    (root / study).mkdir(parents=True)
    (root / study / "results.json").write_text(json.dumps({"profile": profile, "git_commit": "abc",
                                                           "code_fingerprint": fingerprint, "claims": claims}))


def test_collect_marks_other_profiles_and_changed_code_stale(tmp_path):
    current = lambda study: notebook_fingerprint(NOTEBOOKS_DIR / f"{study}.ipynb")  # noqa: E731
    good = claim("KD beats TL", "+3.56", gains=[1.0, 1.2, 1.1], paper_size=3.56)
    pre = claim("teacher beats random", "-", gains=[5.0, 6.0, 7.0], precondition=True)
    _plant(tmp_path, "04_tl_kd_shap", "tiny", current("04_tl_kd_shap"), [good, pre])
    _plant(tmp_path, "03_kassl", "small", current("03_kassl"), [good])
    _plant(tmp_path, "02_coco_binary_kd", "tiny", "older code", [good])
    rows = collect(tmp_path, ["01_clip_head_self_distillation", "02_coco_binary_kd", "03_kassl", "04_tl_kd_shap"],
                   "tiny")
    by_study = {r["study"]: r for r in rows if r["kind"] == "claim"}
    assert by_study["01_clip_head_self_distillation"]["verdict"] == "not measured at this profile"
    assert "other code" in by_study["02_coco_binary_kd"]["stale"]
    assert "profile 'small'" in by_study["03_kassl"]["stale"]
    assert by_study["04_tl_kd_shap"]["stale"] == "" and by_study["04_tl_kd_shap"]["ours"] == "+1.10 +- 0.10 (n = 3)"
    assert by_study["04_tl_kd_shap"]["inside"] == "no"  # +3.56 is far above [+0.85, +1.35]
    assert "| no | reproduced |" in markdown([by_study["04_tl_kd_shap"]])
    assert counts(rows) == {"reproduced": 1, "not reproduced": 0, "within noise": 0,
                            "not measured at this profile": 1}
    assert counts(rows, "precondition")["reproduced"] == 1


def test_readme_findings_block_is_regenerated(tmp_path):
    rows = [{"study": "04", "kind": "claim", "claim": "KD | helps", "paper": "+3.56", "ours": "+1.10 +- 0.10 (n = 3)",
             "value": "85.5 -> 86.6", "note": "gain = KD - TL", "measured": "", "interval": "[+0.85, +1.35]",
             "inside": "no", "verdict": "reproduced", "stale": ""}]
    table = markdown(rows)
    assert ("| 04 | KD \\| helps | +3.56 | 85.5 -> 86.6 | +1.10 +- 0.10 (n = 3); gain = KD - TL | [+0.85, +1.35] "
            "| no | reproduced |") in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    assert write_readme(rows, readme) and not write_readme(rows, readme)
    assert readme.read_text() == f"intro\n{README_START}\n{table}{README_END}\noutro\n"
    readme.write_text("no block")
    with pytest.raises(ValueError, match="findings"):
        write_readme(rows, readme)


def test_committed_readme_findings_match_the_committed_results():
    """The README's findings are the ledger of figures/*/results.json, not typed by hand."""
    studies = [p.stem for p in runner.notebooks() if not p.stem.startswith("00")]
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert block.strip() == markdown(collect(FIGURES_DIR, studies, "small")).strip()
