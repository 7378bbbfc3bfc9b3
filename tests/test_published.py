"""The weights shipped in published/: intact, served only for their recipe, and a publish/lookup round trip."""

import pytest
import torch

from kdutils import published
from kdutils.__main__ import main
from kdutils.errors import CorruptFileError
from kdutils.pretrain import SynthData
from kdutils.profiles import load_profile

SHIPPED = published.manifest()


def test_every_shipped_file_has_its_recorded_hash_and_size():
    assert SHIPPED and set(SHIPPED) <= set(published.REGISTRY)
    for name, entry in SHIPPED.items():
        path = published.FOLDER / entry["file"]
        assert published.sha256(path) == entry["sha256"], name
        assert path.stat().st_size == entry["bytes"] < 5_000_000, name  # small files: no weights over 5 MB in git
        assert "code" not in entry["recipe"] and not entry["recipe"]["dry_run"], name
        assert entry["recipe"].get("seed", 0) == 0, name  # only backbone seed 0 is published


def test_shipped_ssl_teachers_beat_random_weights_clearly():
    ssl = {name: entry["summary"] for name, entry in SHIPPED.items() if name.startswith("ssl-")}
    if not ssl:
        pytest.skip("no SSL teacher is shipped in published/ yet (python -m kdutils publish ssl-byol-resnet_m ...)")
    for name, summary in ssl.items():
        assert summary["probe"]["top1"] > summary["random_init_probe"]["top1"] + 5.0, name


@pytest.fixture
def tiny_published(tmp_path, monkeypatch):
    """`source-resnet_s` published at `tiny` into a temporary folder, through the command line."""
    monkeypatch.setattr(published, "FOLDER", tmp_path / "published")
    assert main(["publish", "source-resnet_s", "--profile", "tiny"]) == 0
    return load_profile("tiny"), published.manifest()["source-resnet_s"]


def _recipe_key(entry, **changes):
    return {**entry["recipe"], "code": "any fingerprint", **changes}


def test_round_trip_serves_the_published_weights_without_training(tiny_published, monkeypatch):
    from kdutils import pretrain

    cfg, entry = tiny_published
    state, summary = published.lookup("source-resnet_s", _recipe_key(entry))
    assert summary["published"]["sha256"] == entry["sha256"] and summary["recipe"] == entry["recipe"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the weights are published")

    empty_cache = published.FOLDER.parent / "empty-cache"  # nothing to fall back on
    monkeypatch.setattr(pretrain, "train", no_training)
    monkeypatch.setattr(published, "cache_root", lambda: empty_cache)  # where PretrainingFiles names its files
    model, summary = pretrain.pretrain_source("resnet_s", pretrain.SourcePretraining.of(cfg))
    assert not model.training and summary["published"]["file"] == "source-resnet_s.pt.gz"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_another_recipe_is_not_served(tiny_published):
    _, entry = tiny_published
    assert published.lookup("source-resnet_s", _recipe_key(entry, seed=1)) is None
    assert published.lookup("source-resnet_m", _recipe_key(entry)) is None


def test_a_tampered_or_missing_file_raises_naming_it_and_the_remedy(tiny_published):
    _, entry = tiny_published
    path = published.FOLDER / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"source-resnet_s\.pt\.gz.*altered.*git checkout -- published/"):
        published.lookup("source-resnet_s", _recipe_key(entry))
    path.unlink()
    with pytest.raises(CorruptFileError, match=r"missing.*python -m kdutils publish source-resnet_s"):
        published.lookup("source-resnet_s", _recipe_key(entry))


@pytest.mark.parametrize("method", ["byol", "moco_v2"])
def test_the_small_profile_loads_the_shipped_ssl_teachers_without_training(method, monkeypatch):
    from kdutils import kassl_encoders

    def no_training(*args, **kwargs):
        raise AssertionError("trained in-run: the shipped recipe no longer matches the small profile")

    monkeypatch.setattr(kassl_encoders, "_train_ssl_encoder", no_training)
    cfg = load_profile("small")
    encoder, summary = kassl_encoders.ssl_teacher(kassl_encoders.SSLRecipe.of(cfg, method), SynthData.of(cfg))
    assert summary["published"]["file"] == f"ssl-{method}-resnet_m.pt.gz" and not encoder.training


def test_study3_takes_one_backbone_seed_and_says_so_for_several():
    from kdutils.errors import ConfigError
    from kdutils.kassl_encoders import TeacherSources

    with pytest.raises(ConfigError, match="once per backbone seed"):
        TeacherSources.of(load_profile("tiny", seeds=[0, 1], backbone_seeds=[0, 1]))


def test_a_pretraining_keeps_its_checkpoint_and_summary_under_its_name_and_key(tmp_path, monkeypatch):
    from kdutils.checkpoint import save_checkpoint

    monkeypatch.setattr(published, "cache_root", lambda: tmp_path)
    run = published.PretrainingFiles("demo", {"what": "demo", "seed": 0, "code": "v1"})
    assert run.checkpoint == tmp_path / "pretrain" / f"demo-{run.digest}.pt"
    assert run.digest != published.PretrainingFiles("demo", {"what": "demo", "seed": 0, "code": "v2"}).digest
    trained, fresh = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert run.shipped(fresh) is None and run.finished(fresh) is None  # not published, not trained
    save_checkpoint({"model": trained.state_dict()}, run.checkpoint)
    assert run.finished(fresh) is None  # a checkpoint without a summary is an interrupted run: it resumes
    assert run.finish({"top1": 50.0}) == {"top1": 50.0} and run.finished(fresh) == {"top1": 50.0}
    assert torch.equal(fresh.weight, trained.weight)
