"""The cache never serves entries of older code, survives corrupt entries and concurrent writers."""

import importlib
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from kdutils.cache import cached, code_fingerprint
from kdutils.profiles import load_profile

PRODUCER = """
import torch


def compute():
    return torch.tensor({value})  # {comment}
"""


def _never():
    raise AssertionError("the cache was not used")


def test_an_entry_of_older_code_is_not_served(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "producer_mod.py"
    source.write_text(PRODUCER.format(value=1, comment="first"))
    import producer_mod

    assert cached("x", {"k": 1}, producer_mod.compute, root=tmp_path / "c", verbose=False) == 1
    source.write_text(PRODUCER.format(value=2, comment="first"))  # the producing code changed
    importlib.reload(producer_mod)
    assert cached("x", {"k": 1}, producer_mod.compute, root=tmp_path / "c", verbose=False) == 2
    source.write_text(PRODUCER.format(value=2, comment="only a comment changed"))
    importlib.reload(producer_mod)
    fingerprint = code_fingerprint("producer_mod")
    assert cached("x", {"k": 1, "code": fingerprint}, _never, root=tmp_path / "c", verbose=False) == 2  # same key


def test_fingerprint_follows_the_kdutils_modules_a_producer_imports():
    from kdutils.cache import _module_code

    assert {"kdutils.train", "kdutils.synthworld", "kdutils.cache"} <= set(_module_code("kdutils.pretrain")[1])
    assert code_fingerprint("kdutils.pretrain") != code_fingerprint("kdutils.synthworld")


def test_source_pretraining_retrains_after_its_code_changed(tmp_path, monkeypatch):
    from kdutils import pretrain

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    pretraining = pretrain.SourcePretraining.of(load_profile("tiny", n_source_train=64, n_source_test=32,
                                                             batch_size=32, progress=False, dry_run=True))
    pretrain.pretrain_source("resnet_xs", pretraining, seed=0)
    monkeypatch.setattr(pretrain.SynthData, "split", lambda *a, **k: _never())
    pretrain.pretrain_source("resnet_xs", pretraining, seed=0)  # same code: the cached weights
    monkeypatch.setattr(pretrain, "code_fingerprint", lambda module: "other code")
    with pytest.raises(AssertionError, match="the cache was not used"):
        pretrain.pretrain_source("resnet_xs", pretraining, seed=0)


def test_a_truncated_entry_is_discarded_and_recomputed_with_a_warning_naming_it(tmp_path):
    cached("x", {"k": 1}, lambda: torch.arange(1000), root=tmp_path, verbose=False)
    (entry,) = (tmp_path / "x").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"cache entry {entry} is unreadable.*computing it again"):
        value = cached("x", {"k": 1}, lambda: torch.arange(1000), root=tmp_path, verbose=False)
    assert torch.equal(value, torch.arange(1000))
    assert torch.equal(cached("x", {"k": 1}, _never, root=tmp_path, verbose=False), torch.arange(1000))


WRITER = """
import os, sys, time
from pathlib import Path
import torch
from kdutils.cache import cached

root, log, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(root.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)

def compute():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)  # long enough for the other process to ask for the same entry meanwhile
    return torch.arange(100_000)

value = cached("shared", {"k": 1, "code": "fixed"}, compute, root=root, verbose=False)
assert torch.equal(value, torch.arange(100_000))
"""


def test_two_processes_filling_one_entry_compute_it_once(tmp_path):
    root, log, go = tmp_path / "cache", tmp_path / "log.txt", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(root), str(log), str(go)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both imported and waiting: they ask for the entry at the same moment
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert len(log.read_text().split()) == 1  # one computed, the other waited for the lock and read it
    assert torch.equal(torch.load(next(root.glob("shared/*.pt"))), torch.arange(100_000))


PRETRAINER = """
import os, sys, time
from pathlib import Path
from kdutils import pretrain
from kdutils.profiles import load_profile

log, go = Path(sys.argv[1]), Path(sys.argv[2])
real_train = pretrain.train

def logged_train(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)
    return real_train(*args, **kwargs)

pretrain.train = logged_train
cfg = load_profile("tiny", n_source_train=64, n_source_test=32, batch_size=32, progress=False, dry_run=True)
(log.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
pretrain.pretrain_source("resnet_xs", pretrain.SourcePretraining.of(cfg), seed=0)
"""


def test_two_processes_pretraining_one_backbone_train_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    log, go = tmp_path / "log.txt", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(PRETRAINER), str(log), str(go)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=180) == 0, proc.stderr.read()
    assert len(log.read_text().split()) == 1  # the second waited for the lock, then loaded the weights
