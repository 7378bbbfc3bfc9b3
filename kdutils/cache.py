"""A disk cache for what the studies compute once and reuse: frozen networks' outputs, SHAP maps, captions.

Frozen backbones and teachers give the same output for the same input every
time, so the studies compute them once per (model, data, view) and train heads
on the cached tensors; SHAP attributions and generated captions are cached the
same way, and finished per-seed results are kept under `results_root`. The key
is explicit: a model fingerprint (a hash of its weights), a description of the
data and the view; any change gives a new file.
Every key also carries a code fingerprint (`code_fingerprint`) of the module
that produced the entry, so a warm cache never serves the results of older
code. A file lock lets concurrent processes share one cache, and an entry that
cannot be read is deleted and recomputed with a warning naming it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from .paths import REPO_ROOT, write_atomically

_PACKAGE_DIR = Path(__file__).resolve().parent

__all__ = ["cache_root", "results_root", "key_digest", "content_digest", "code_fingerprint", "notebook_fingerprint",
           "model_fingerprint", "cached", "entry_lock"]


def cache_root() -> Path:
    """`$KD_CACHE_DIR`, else `.cache/` at the repository root (gitignored)."""
    env = os.environ.get("KD_CACHE_DIR")
    return Path(env) if env else REPO_ROOT / ".cache"


def results_root() -> Path:
    """`$KD_RESULTS_STORE`, else `results/` in the cache: finished per-seed results, reused by a warm run
    and by a sweep's merge (`kdutils.sweep` points its jobs and its merge at one shared folder)."""
    env = os.environ.get("KD_RESULTS_STORE")
    return Path(env) if env else cache_root() / "results"


def key_digest(key: dict) -> str:
    """A short stable hash of a JSON-serialisable key."""
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def content_digest(*parts) -> str:
    """A short hash of what a result depends on: arrays and tensors (values, dtype and shape), texts, lists of texts.

    >>> content_digest(np.arange(3)) == content_digest(torch.arange(3))
    True
    """
    h = hashlib.sha256()
    for part in parts:  # each part tagged with its kind and size, so no two parts can read as one
        if isinstance(part, str):
            part = [part]
        if isinstance(part, (list, tuple)):
            texts = [t.encode() for t in part]
            h.update(f"texts{[len(t) for t in texts]}".encode() + b"".join(texts))
            continue
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous()
            dtype, raw = str(part.dtype).removeprefix("torch."), part.view(-1).view(torch.uint8).numpy()
        else:
            part = np.ascontiguousarray(part)
            dtype, raw = str(part.dtype), part.view(np.uint8)
        h.update(f"array {dtype}{tuple(part.shape)}".encode() + raw.tobytes())
    return h.hexdigest()[:16]


def code_fingerprint(module: str) -> str:
    """Hash of the code of `module` and of every kdutils module it imports, directly or not.

    Cache keys carry it (`"code": code_fingerprint(__name__)`), so any change
    to the code that produced an entry gives a new key; comments and layout
    do not count (the syntax tree is hashed, not the text).
    """
    digest, imports = _module_code(module)
    return _with_imports(f"{module}:{digest}", imports)


def notebook_fingerprint(path: str | os.PathLike) -> str | None:
    """`code_fingerprint` of a notebook: its code cells and the kdutils modules they import; None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    own, imports = [], set()
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        python = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            digest, found = _parse_module(python, "")
        except SyntaxError:  # IPython-only syntax: its text counts, its imports cannot be read
            digest, found = hashlib.sha256(source.encode()).hexdigest(), ()
        own.append(digest)
        imports.update(found)
    return _with_imports(f"notebook:{','.join(own)}", imports)


def _with_imports(own: str, imports) -> str:
    """Hash of `own` and of the code of every kdutils module in `imports`, followed through their imports."""
    seen, todo = set(), list(imports)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_module_code(name)[1])
    h = hashlib.sha256(own.encode())
    for name in sorted(seen):
        h.update(f"{name}:{_module_code(name)[0]};".encode())
    return h.hexdigest()[:16]


def _module_code(name: str) -> tuple[str, tuple[str, ...]]:
    """(hash of the module's syntax tree, the kdutils modules it imports); ("", ()) without a source file.

    kdutils modules are read from the package folder, never imported: a lazily imported module is read, not run.
    """
    path = _source_file(name) if _ours(name) else getattr(sys.modules.get(name), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return "", ()
    package = name if Path(path).name == "__init__.py" else name.rpartition(".")[0]
    return _parse_module(Path(path).read_text(encoding="utf-8"), package)


@functools.lru_cache(maxsize=None)
def _parse_module(source: str, package: str) -> tuple[str, tuple[str, ...]]:
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            imported.add(base)
            imported.update(f"{base}.{a.name}" for a in node.names)  # `from . import metrics` imports a module
    ours = (n for n in imported if _ours(n) and _source_file(n) is not None)
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), tuple(sorted(ours))


def _ours(name: str) -> bool:
    return name == "kdutils" or name.startswith("kdutils.")


def _source_file(name: str) -> Path | None:
    """kdutils.a.b -> kdutils/a/b.py or kdutils/a/b/__init__.py; None if neither exists."""
    base = _PACKAGE_DIR.joinpath(*name.split(".")[1:])
    return next((f for f in (base.with_name(base.name + ".py"), base / "__init__.py") if f.is_file()), None)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: two models with equal weights share a cache."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def entry_lock(path: str | os.PathLike) -> FileLock:
    """An inter-process lock for the cache entry (or checkpoint) at `path`: one process fills it, the others wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


_MISSING = object()


def _read_entry(path: Path):
    """The stored object, or _MISSING when absent or unreadable (then deleted, with a warning naming it)."""
    if not path.exists():
        return _MISSING
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # truncated, corrupt, or pickling classes that no longer exist
        warnings.warn(f"cache entry {path} is unreadable ({type(err).__name__}: {err}); "
                      "deleting it and computing it again.", stacklevel=3)
        path.unlink(missing_ok=True)
        return _MISSING


def cached(kind: str, key: dict, compute: Callable[[], object], root: Path | None = None,
           verbose: bool = True):
    """Return the object stored under (kind, key), computing and saving it on a miss.

    Unless `key` holds a "code" entry, the code fingerprint of the module that
    defines `compute` is added to it. Concurrent processes asking for one
    entry compute it once (a file lock); writes are atomic (temporary file,
    then rename), so an interrupted run never leaves a truncated entry behind.
    """
    if "code" not in key:
        key = {**key, "code": code_fingerprint(compute.__module__)}
    root = Path(root) if root is not None else cache_root()
    path = root / kind / f"{key_digest(key)}.pt"
    value = _read_entry(path)
    if value is _MISSING:
        with entry_lock(path):
            value = _read_entry(path)  # another process may have filled it while this one waited
            if value is _MISSING:
                value = compute()
                write_atomically(path, lambda tmp: torch.save(value, tmp))
                (path.with_suffix(".json")).write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
                if verbose:
                    print(f"[cache] miss {kind}/{path.name} (computed and saved)")
                return value
    if verbose:
        print(f"[cache] hit  {kind}/{path.name}")
    return value
