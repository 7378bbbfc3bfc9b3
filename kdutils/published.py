"""Weights this lab publishes for the `small` profile, shipped in the repository's `published/`.

At `small` the papers' published networks are replaced by networks pretrained
here on SynthWorld (source backbones, a small CLIP, a small RoBERTa, study
3's self-supervised teachers). Training them in every cold run cost about
7-8 minutes, and a run's budget left study 3's SSL teachers barely above
random weights. So they are trained once, with a documented command
(`python -m kdutils publish NAME`), and shipped with their recipe, training
summary, sha256 and commit in `published/MANIFEST.json`, as `paper` loads
published checkpoints. A pretraining function asks `lookup(name, recipe)`
first: only the exact recipe (profile knobs, data, seed, dry run; not the code
fingerprint) is served, anything else trains in-run and is cached as before.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import cache_root, entry_lock, key_digest
from .checkpoint import load_checkpoint
from .errors import ConfigError, CorruptFileError
from .paths import REPO_ROOT, read_json, write_atomically
from .results import write_json

FOLDER = REPO_ROOT / "published"  # tests point this elsewhere
_disabled = False  # True while `publish` trains: it must not serve the weights it is replacing


def recipe(key: dict) -> dict:
    """A pretraining cache key without its code fingerprint, as plain JSON values."""
    return json.loads(json.dumps({k: v for k, v in key.items() if k != "code"}, sort_keys=True))


def manifest() -> dict:
    return read_json(FOLDER / "MANIFEST.json") or {}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lookup(name: str, key: dict) -> tuple[dict, dict] | None:
    """(state_dict, summary) of the published `name` if it was trained with `key`'s recipe, else None.

    A listed file that is missing or altered raises `CorruptFileError`.
    """
    entry = None if _disabled else manifest().get(name)
    if entry is None or entry["recipe"] != recipe(key):
        return None
    path = FOLDER / entry["file"]
    remedy = f"Restore it with `git checkout -- published/` or retrain it with `python -m kdutils publish {name}`."
    if not path.exists():
        raise CorruptFileError(f"published weights '{path}' are listed in MANIFEST.json but missing. {remedy}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise CorruptFileError(f"published weights '{path}' have sha256 {digest[:12]}..., MANIFEST.json records "
                               f"{entry['sha256'][:12]}...: the file was altered. {remedy}")
    state = torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), map_location="cpu", weights_only=True)
    print(f"[published] {name}: weights from published/{entry['file']} (trained at commit {entry['commit'][:10]})")
    return state, {**entry["summary"], "recipe": entry["recipe"], "published": {"file": entry["file"], "sha256": digest,
                                                     "commit": entry["commit"]}}


@dataclass(frozen=True)
class PretrainingFiles:
    """The files of one pretraining, named by its published `name` and its cache `key` (recipe plus code version);
    how it trains is its recipe's business (a `pretrain.SynthPretraining`).

    `published/` is asked first (`shipped`); else `checkpoint`, `<cache>/pretrain/<name>-<digest>.pt`, is fit's
    checkpoint (an interrupted run resumes from it) and `summary_file` beside it is written when the run has
    finished (`finish`), so a finished run loads without data or evaluation (`finished`).
    """

    name: str
    key: dict

    @property
    def digest(self) -> str:
        return key_digest(self.key)

    @property
    def checkpoint(self) -> Path:
        return cache_root() / "pretrain" / f"{self.name}-{self.digest}.pt"

    @property
    def summary_file(self) -> Path:
        return self.checkpoint.with_suffix(".summary.json")

    def shipped(self, model: torch.nn.Module) -> dict | None:
        """The published summary, with its weights loaded into `model`, when this recipe is shipped; else None."""
        found = lookup(self.name, self.key)
        if found is None:
            return None
        model.load_state_dict(found[0])
        return found[1]

    def finished(self, model: torch.nn.Module) -> dict | None:
        """The summary of a run finished in this cache, with its weights loaded into `model`; else None."""
        if not (self.summary_file.exists() and self.checkpoint.exists()):
            return None
        model.load_state_dict(load_checkpoint(self.checkpoint)["model"])
        return json.loads(self.summary_file.read_text())

    def finish(self, summary: dict) -> dict:
        """Record that the run finished (fit returned): its summary, returned as given."""
        write_json(self.summary_file, summary)
        return summary


def _source(arch):
    def train(cfg):
        from .pretrain import SourcePretraining, pretrain_source

        return pretrain_source(arch, SourcePretraining.of(cfg), seed=0)
    return train


def _clip(cfg):
    from .clip import ClipPretraining, pretrain_small_clip

    model, _, summary = pretrain_small_clip(ClipPretraining.of(cfg), seed=0)
    return model, summary


def _roberta(cfg):
    from .selfdistill_encoders import TextPretraining, pretrain_small_roberta

    encoder, summary = pretrain_small_roberta(TextPretraining.of(cfg), seed=0)
    return encoder.model, summary


def _ssl(method):
    def train(cfg):
        from .kassl_config import probe_args
        from .kassl_data import load_data
        from .kassl_encoders import SSLRecipe, ssl_teacher, teacher_probes
        from .pretrain import SynthData
        from .train import resolve_device

        recipe = SSLRecipe.of(cfg, method)
        encoder, summary = ssl_teacher(recipe, SynthData.of(cfg), seed=0, device=cfg.device)
        return encoder, {**summary, **teacher_probes(encoder, recipe.arch, load_data(cfg),
                                                     device=resolve_device(cfg.device), **probe_args(cfg))}
    return train


#: name -> a call returning (the module whose state_dict is shipped, its summary with a "recipe")
REGISTRY = {"source-resnet_s": _source("resnet_s"), "source-resnet_m": _source("resnet_m"),
            "clip-clip_s": _clip, "roberta-small": _roberta,
            "ssl-byol-resnet_m": _ssl("byol"), "ssl-moco_v2-resnet_m": _ssl("moco_v2")}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def publish(name: str, cfg) -> dict:
    """Train `name` in-run with `cfg`'s recipe and write its file and manifest entry (atomically); returns the entry."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown published network '{name}'; choose from {sorted(REGISTRY)}.")
    if cfg.threads:  # as a notebook of this profile trains (one thread: no OpenMP stalls on a busy machine)
        torch.set_num_threads(cfg.threads)
    global _disabled
    started, _disabled = time.perf_counter(), True  # lookups return None: the pretraining function trains
    try:
        module, summary = REGISTRY[name](cfg)
    finally:
        _disabled = False
    return ship(name, module, summary, {"trained_by": f"python -m kdutils publish {name} --profile {cfg.profile}",
                                        "commit": _commit(),
                                        "publish_seconds": round(time.perf_counter() - started, 1)})


def ship(name: str, module, summary: dict, provenance: dict) -> dict:
    """Write `module`'s weights (fp32, gzipped: 7% smaller, every file under 5 MB) as published/NAME.pt.gz and its
    manifest entry; `summary` holds its "recipe"."""
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)  # mtime 0: the same bytes every time
    path = write_atomically(FOLDER / f"{name}.pt.gz", lambda tmp: tmp.write_bytes(data))
    summary = dict(summary)
    entry = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, "recipe": summary.pop("recipe"),
             "summary": summary, **provenance}
    with entry_lock(cache_root() / "published-manifest"):  # two publish commands at once keep both entries
        write_json(FOLDER / "MANIFEST.json", {**manifest(), name: entry})
    print(f"published {name}: {path} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]})")
    return entry
