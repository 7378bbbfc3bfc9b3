"""Every profile field says what values it accepts; a value outside them fails before any work."""

import subprocess
import sys

import pytest

from kdutils.errors import ConfigError
from kdutils.paths import REPO_ROOT
from kdutils.profiles import ALL_FIELDS, PROFILE_NAMES, load_profile
from kdutils.profiles.rules import Allowed


def test_every_field_has_allowed_values_and_every_profile_meets_them():
    assert all(isinstance(spec[2], Allowed) for spec in ALL_FIELDS.values())
    for profile in PROFILE_NAMES:
        load_profile(profile)


@pytest.mark.parametrize("overrides, message", [
    ({"s4_alpha": 2.0}, r"'s4_alpha' must be in \[0, 1\], got 2.0"),
    ({"n_target_train": 0}, r"'n_target_train' must be > 0 .*got 0"),
    ({"s4_alpha_sweep": [0.1, -0.5]}, r"'s4_alpha_sweep\[1\]' must be in \[0, 1\], got -0.5"),
    ({"s4_temperature": 0.0}, r"'s4_temperature' must be > 0"),
    ({"s4_h4_fractions": [0.0, 1.0]}, r"'s4_h4_fractions\[0\]' must be in \(0, 1\]"),
    ({"s2_sweep_heads": ["additve"]}, r"'s2_sweep_heads\[0\]' must be one of 'additive', 'interaction'"),
    ({"s3_variants": []}, r"'s3_variants' must be a non-empty list"),
    ({"device": "gpu"}, r"'device' must be 'auto'"),
    ({"s1_head_lr": float("inf")}, r"'s1_head_lr' must be a finite number"),
    ({"cell_timeout": 0}, r"'cell_timeout' must be > 0"),
])
def test_values_outside_the_allowed_ones_name_field_value_and_rule(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("small", **overrides)


def test_synthworld_sizes_may_be_zero_only_where_synthworld_is_unused():
    assert load_profile("paper").n_target_train == 0
    with pytest.raises(ConfigError, match="n_source_train"):
        load_profile("tiny", n_source_train=0)


def test_allowed_names_match_the_code_that_reads_them():
    from kdutils.kassl_config import TARGET_NORMS, TEACHER_LABELS, VARIANTS
    from kdutils.matching import TwoTowerMatcher
    from kdutils.augment import VIEW_PRESETS

    def allows(field, values):
        return all(ALL_FIELDS[field][2].check(v, "small") for v in values)

    assert allows("s3_variants", VARIANTS) and allows("s3_teachers", TEACHER_LABELS)
    assert allows("s3_target_norm", TARGET_NORMS) and allows("s3_view_preset", VIEW_PRESETS)
    assert allows("s2_sweep_heads", TwoTowerMatcher.HEADS)


@pytest.mark.parametrize("arg, name", [("s4_alpha=2.0", "s4_alpha"), ("n_target_train=0", "n_target_train")])
def test_cli_rejects_a_bad_study_field_before_any_kernel_starts(arg, name, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdutils", "run", "04", "--profile", "small", "-p", arg,
                           "--output-root", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"parameter '{name}' must be" in proc.stderr
    assert not list(tmp_path.iterdir())  # no kernel ran, nothing written


def test_small_runs_three_replicates_sharing_one_backbone_unless_asked():
    cfg = load_profile("small")
    assert len(cfg.seeds) >= 3 and [cfg.backbone_seed(s) for s in cfg.seeds] == [0] * len(cfg.seeds)
    cfg = load_profile("small", seeds=[3, 4, 5], backbone_seeds=[10, 11, 12])
    assert [cfg.backbone_seed(s) for s in (3, 4, 5)] == [10, 11, 12]
    with pytest.raises(ConfigError, match="backbone_seeds"):
        load_profile("small", seeds=[3, 4, 5], backbone_seeds=[10, 11])
    with pytest.raises(ConfigError, match="must not repeat"):
        load_profile("small", seeds=[3, 3])


def test_a_notebook_runs_torch_on_the_profiles_threads(tmp_path):
    import torch

    from kdutils import session

    before = torch.get_num_threads()
    try:
        session.start("99_threads", "tiny", output_dir=str(tmp_path), overrides={"threads": 1})
        assert torch.get_num_threads() == 1
        session.start("99_threads", "tiny", output_dir=str(tmp_path), overrides={"threads": 2})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_published_weights_at_paper_have_no_backbone_seeds():
    with pytest.raises(ConfigError, match="published weights"):
        load_profile("paper", backbone_seeds=[1])


def test_profile_rules_shared_by_the_studies():
    """A dry run trains one epoch per phase; frozen-backbone studies take their one backbone seed or say why not."""
    assert load_profile("tiny").phase_epochs(7) == 7
    assert load_profile("tiny", dry_run=True).phase_epochs(7) == 1
    assert load_profile("tiny", seeds=[0, 1], backbone_seeds=[3]).shared_backbone_seed("study 9 freezes once") == 3
    with pytest.raises(ConfigError, match=r"study 9 freezes once; got backbone_seeds=\[0, 1\]\. Run it once per"):
        load_profile("tiny", seeds=[0, 1], backbone_seeds=[0, 1]).shared_backbone_seed("study 9 freezes once")


@pytest.mark.parametrize("profile, overrides, message", [
    ("tiny", {"s3_teachers": ["byol", "byol"]}, "s3_teachers must be distinct"),
    ("tiny", {"s3_view_bank": 3}, "s3_view_bank must be 0 .fresh views. or an even number"),
    ("paper", {"s3_view_bank": 2}, "use 0 at paper"),
    ("tiny", {"s3_ssl_batch": 63}, r"s3_ssl_batch \(63\) must be a multiple of s3_moco_bn_splits \(2\)"),
    ("tiny", {"s3_moco_epochs": 0}, "s3_moco_epochs must be >= 1 to pretrain the moco_v2 teacher in-run"),
    ("small", {"s1_student_text_encoders": ["roberta"], "s1_text_encoders": ["clip"]},
     "s1_student_text_encoders .'roberta'. must be among s1_text_encoders"),
    ("small", {"s1_ablation_text": "roberta"}, "s1_ablation_text 'roberta' must be one of s1_student_text_encoders"),
    ("tiny", {"s1_ablation_encoder": "vit"}, "s1_ablation_encoder 'vit' must be one of s1_student_encoders"),
])
def test_cross_field_checks_refuse_what_one_field_rule_cannot_see(profile, overrides, message):
    """The study files' CHECKS: each field alone is valid, together they are refused, before any work."""
    with pytest.raises(ConfigError, match=message):
        load_profile(profile, **overrides)
    load_profile(profile)
