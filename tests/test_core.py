"""Teacher wrapper, frozen-output cache, profiles and results files."""

import json

import pytest
import torch
from torch import nn

from kdutils.cache import cached
from kdutils.errors import ConfigError, CorruptFileError
from kdutils.paths import read_json, write_atomically
from kdutils.profiles import PROFILE_NAMES, load_profile
from kdutils.results import write_json, write_results
from kdutils.teacher import FrozenTeacher


def test_frozen_teacher_normalises_and_stays_frozen():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())
    teacher = FrozenTeacher(net, mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    teacher.train()  # must not switch dropout / batch norm on
    assert not teacher.training and not net.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 8, 8)
    manual = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(teacher(x), net(manual))
    assert torch.equal(teacher(x), teacher(x))  # dropout off
    bn_before = net[1].running_mean.clone()
    teacher(x * 10)
    assert torch.equal(net[1].running_mean, bn_before)
    assert not teacher(x).requires_grad


def test_frozen_teacher_resizes_to_its_input_size():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return x.mean((2, 3))

    FrozenTeacher(Probe(), input_size=24)(torch.rand(2, 3, 8, 8))
    assert seen["shape"] == (2, 3, 24, 24)


def test_cache_computes_once_and_reuses(tmp_path):
    calls = {"n": 0}

    def compute():
        calls["n"] += 1
        return torch.arange(5)

    a = cached("logits", {"model": "m", "seed": 1}, compute, root=tmp_path, verbose=False)
    b = cached("logits", {"seed": 1, "model": "m"}, compute, root=tmp_path, verbose=False)
    assert calls["n"] == 1 and torch.equal(a, b)
    cached("logits", {"model": "m", "seed": 2}, compute, root=tmp_path, verbose=False)
    assert calls["n"] == 2
    assert not list(tmp_path.rglob("*.tmp*"))


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_atomically(tmp_path / "sub" / "a.json", lambda tmp: tmp.write_text("old"))

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, crash)
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["a.json"]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_profiles_load(profile):
    cfg = load_profile(profile)
    assert cfg.profile == profile and cfg.batch_size > 0


def test_profile_sizes_grow_from_tiny_to_small():
    tiny, small = load_profile("tiny"), load_profile("small")
    assert tiny.n_target_train < small.n_target_train and tiny.pretrain_epochs < small.pretrain_epochs


@pytest.mark.parametrize("overrides, message", [
    ({"seeds": "abc"}, "'seeds'"),
    ({"seeds": [1, "a"]}, "'seeds\\[1\\]'"),
    ({"no_such_key": 1}, "'no_such_key'"),
    ({"pretrain_epochs": 1.5}, "'pretrain_epochs'"),
    ({"dry_run": 1}, "'dry_run'"),
    ({"context_p": 2.0}, "'context_p'"),
    ({"batch_size": 0}, "'batch_size'"),
])
def test_profile_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("tiny", **overrides)


def test_profile_overrides_and_none_passthrough():
    cfg = load_profile("small", seeds=(0, 7, 42), context_p=1, pretrain_epochs=None)
    assert cfg.seeds == [0, 7, 42] and cfg.context_p == 1.0
    assert cfg.pretrain_epochs == load_profile("small").pretrain_epochs
    assert cfg.replace(dry_run=True).max_steps == 2
    with pytest.raises(ConfigError):
        load_profile("huge")


def test_results_json_has_provenance_and_is_atomic(tmp_path):
    import time

    path = write_results(tmp_path / "r" / "results.json", notebook="nb", metrics={"acc": 91.5, "bad": float("nan")},
                         config=load_profile("tiny").to_dict(), seeds=[0], started=time.time())
    data = read_json(path)
    assert data["metrics"] == {"acc": 91.5, "bad": "nan"}
    for key in ("config", "seeds", "git_commit", "environment", "wall_time_s", "profile"):
        assert key in data
    assert data["environment"]["libraries"]["torch"].startswith("2.")
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    write_json(tmp_path / "x.json", {"t": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "x.json").read_text()) == {"t": [1, 2]}
    assert read_json(tmp_path / "absent.json") is None
    (tmp_path / "edited.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="edited.json is not valid JSON"):
        read_json(tmp_path / "edited.json")


def test_source_pretraining_is_cached_with_its_summary(tmp_path, monkeypatch):
    """A second call loads the finished weights and summary without generating or scoring any data."""
    from kdutils import pretrain

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    cfg = load_profile("tiny", n_source_train=128, n_source_test=64, batch_size=32, progress=False)
    pretraining = pretrain.SourcePretraining.of(cfg)
    model, summary = pretrain.pretrain_source("resnet_xs", pretraining, seed=0)

    def no_data(*args, **kwargs):
        raise AssertionError("a cached pretraining must not generate data")

    monkeypatch.setattr(pretrain.SynthData, "split", no_data)
    again, summary_again = pretrain.pretrain_source("resnet_xs", pretraining, seed=0)
    assert json.loads(json.dumps(summary)) == summary_again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not again.training and 0 <= summary_again["source_top1"] <= 100


def test_source_pretraining_does_not_depend_on_earlier_random_draws(tmp_path, monkeypatch):
    """Same seed, same weights, whatever ran before in the process (the notebooks share one kernel)."""
    from kdutils import pretrain

    cfg = load_profile("tiny", n_source_train=64, n_source_test=32, batch_size=32, progress=False, dry_run=True)
    states = []
    for i, draws in enumerate((0, 17)):
        monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / str(i)))
        torch.rand(draws)
        model, _ = pretrain.pretrain_source("resnet_xs", pretrain.SourcePretraining.of(cfg), seed=3)
        states.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values()))


def test_profile_paths_resolve_from_the_repository_not_the_working_directory(tmp_path, monkeypatch):
    from kdutils.paths import REPO_ROOT, under

    monkeypatch.chdir(tmp_path)
    assert under("data", "coco/x.json") == REPO_ROOT / "data" / "coco" / "x.json"
    assert under(tmp_path, "w.pt") == tmp_path / "w.pt"
    assert under("data", tmp_path / "abs.pt") == tmp_path / "abs.pt"
    assert under("data") == REPO_ROOT / "data"


def test_the_commit_is_dirty_for_changed_code_not_for_fresh_figures(tmp_path):
    import subprocess

    from kdutils.results import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "results.json").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    (tmp_path / "figures" / "results.json").write_text("new")
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path).endswith("+dirty")
