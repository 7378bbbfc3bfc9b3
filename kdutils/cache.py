"""A disk cache for the outputs of frozen networks (features or logits).

Frozen backbones and teachers give the same output for the same input every
time, so the studies compute them once per (model, data, view) and train heads
on the cached tensors. The key is explicit: a model fingerprint (a hash of its
weights), a description of the data and the view; any change gives a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["cache_root", "key_digest", "model_fingerprint", "cached", "cached_outputs"]


def cache_root() -> Path:
    """`$KD_CACHE_DIR`, else `.cache/` at the repository root (gitignored)."""
    env = os.environ.get("KD_CACHE_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache"


def key_digest(key: dict) -> str:
    """A short stable hash of a JSON-serialisable key."""
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: two models with equal weights share a cache."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def cached(kind: str, key: dict, compute: Callable[[], object], root: Path | None = None,
           verbose: bool = True):
    """Return the object stored under (kind, key), computing and saving it on a miss.

    Writes are atomic (temporary file, then rename), so an interrupted run never
    leaves a truncated cache entry behind.
    """
    root = Path(root) if root is not None else cache_root()
    path = root / kind / f"{key_digest(key)}.pt"
    if path.exists():
        if verbose:
            print(f"[cache] hit  {kind}/{path.name}")
        return torch.load(path, weights_only=False)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(value, tmp)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
    if verbose:
        print(f"[cache] miss {kind}/{path.name} (computed and saved)")
    return value


@torch.no_grad()
def cached_outputs(model: nn.Module, loader, *, data_key: dict, view: str = "plain",
                   inputs: Callable = lambda b: b[0], device: torch.device | str = "cpu",
                   root: Path | None = None, desc: str = "cache") -> torch.Tensor:
    """Outputs of frozen `model` over `loader` (in loader order), cached on disk.

    `data_key` identifies the data (generator, seed, split, size...), `view`
    the deterministic transform applied (e.g. "plain", "hflip"). The loader
    must not shuffle: row i of the result belongs to item i of the data set.
    """
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and isinstance(sampler, torch.utils.data.RandomSampler):
        raise ValueError("cached_outputs needs a loader with shuffle=False (row order = data order).")
    key = {"model": model_fingerprint(model), "data": data_key, "view": view}

    def compute():
        device_ = torch.device(device)
        was_training = model.training
        model.eval().to(device_)
        outs = [model(inputs(b).to(device_)).float().cpu()
                for b in tqdm(loader, desc=f"{desc} [{view}]", leave=False)]
        model.train(was_training)
        return torch.cat(outs)

    return cached("outputs", key, compute, root=root)
