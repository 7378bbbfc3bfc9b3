"""Published self-supervised ResNet checkpoints, loaded into torchvision's ResNet.

KASSL's `paper` teachers are ResNet-50s pretrained with BYOL and MoCo-v2 on
ImageNet-1k. Their checkpoints come in a few layouts; this module reads them
all into `torchvision.models.resnet50` and refuses anything but a clean fit:

* official MoCo (`facebookresearch/moco`): `{"state_dict": {"module.encoder_q.conv1.weight", ...}}`
  with the MLP head under `module.encoder_q.fc.*` and the key encoder and
  queue beside it;
* `backbone.*` as mmselfsup, solo-learn and lightly save them, possibly under
  `state_dict` (PyTorch Lightning): torchvision names (`backbone.layer1.0.conv1.weight`,
  mmselfsup, solo-learn) or lightly's `nn.Sequential(*resnet.children()[:-1])`
  indices (`backbone.4.0.conv1.weight`);
* a plain torchvision state dict, with or without a `module.` prefix.

Heads (projector, predictor, classifier, momentum copies, queues) are
stripped; then `load_state_dict(strict=False)` must report exactly the
classifier (`fc.weight`, `fc.bias`) missing and nothing unexpected, or the
load fails with the offending keys named. The classifier is replaced by
`nn.Identity`, so the model returns its pooled feature (2048-d for ResNet-50).

Files are read with torch's safe unpickler (`weights_only=True`). A file
that also pickles Python objects (Lightning's hyper-parameters) could run
code on loading, so it loads only when the caller passes `trust_pickle=True`.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, MissingDataError
from .models import torchvision_model
from .zoo import headless

__all__ = ["CHECKPOINT_SOURCES", "detect_format", "backbone_state_dict", "load_ssl_resnet", "CheckpointError"]

#: Where the two teachers of the presentation can be downloaded (for error messages).
CHECKPOINT_SOURCES = {
    "moco_v2": "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar "
               "(official MoCo-v2, 800 epochs)",
    "byol": "https://download.openmmlab.com/mmselfsup/1.x/byol/byol_resnet50_16xb256-coslr-200e_in1k/"
            "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth (mmselfsup BYOL, 200 epochs); "
            "solo-learn's BYOL ResNet-50 checkpoint also loads",
}
CLASSIFIER_KEYS = frozenset({"fc.weight", "fc.bias"})
# lightly: backbone = nn.Sequential(*list(resnet.children())[:-1]); child index -> torchvision name
_LIGHTLY_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_MOCO_PREFIX = "module.encoder_q."


class CheckpointError(ConfigError):
    """A checkpoint was found but does not fit the architecture."""


def _unwrap(obj) -> dict:
    """The tensor dict inside a checkpoint file (`state_dict`, `model` or the file itself)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"a checkpoint must hold a dict, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no state dict in the checkpoint (top-level keys: {sorted(obj)[:8]})")
    return tensors


def detect_format(state_dict: dict) -> str:
    """'moco' (module.encoder_q.*), 'backbone' (backbone.<name>), 'lightly' (backbone.<index>) or 'torchvision'."""
    keys = list(state_dict)
    if any(k.startswith(_MOCO_PREFIX) for k in keys):
        return "moco"
    backbone = [k[len("backbone."):] for k in keys if k.startswith("backbone.")]
    if backbone:
        return "lightly" if all(k.split(".")[0].isdigit() for k in backbone) else "backbone"
    return "torchvision"


def backbone_state_dict(state_dict: dict) -> tuple[dict, str]:
    """Keep the backbone's tensors under torchvision's names; return them and the detected format."""
    fmt = detect_format(state_dict)
    out = {}
    if fmt == "moco":
        out = {k[len(_MOCO_PREFIX):]: v for k, v in state_dict.items()
               if k.startswith(_MOCO_PREFIX) and not k.startswith(_MOCO_PREFIX + "fc.")}
    elif fmt == "backbone":
        out = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    elif fmt == "lightly":
        for k, v in state_dict.items():
            if not k.startswith("backbone."):
                continue
            index, _, rest = k[len("backbone."):].partition(".")
            if index not in _LIGHTLY_CHILDREN:
                raise CheckpointError(f"lightly-style key '{k}': child {index} of a ResNet holds no weights")
            out[f"{_LIGHTLY_CHILDREN[index]}.{rest}"] = v
    else:
        strip = "module." if all(k.startswith("module.") for k in state_dict) else ""
        out = {k[len(strip):]: v for k, v in state_dict.items() if not k[len(strip):].startswith("fc.")}
    if not out:
        raise CheckpointError(f"no backbone tensors found (format '{fmt}', first keys {list(state_dict)[:5]})")
    return out, fmt


def _read(path: Path, trust_pickle: bool, how_to_get: str):
    unreadable = (f"{path} cannot be read: the file is truncated or corrupt. "
                  f"{how_to_get or 'Download it again.'}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors, which torch's safe loader refuses "
                f"({str(err).splitlines()[0]}). Loading it runs code from the file: only if you trust its "
                "source, pass trust_pickle=True (profile field s3_trust_pickled_checkpoints=True).") from None
    except Exception as err:
        raise CheckpointError(f"{unreadable} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    # Lightning checkpoints (solo-learn) pickle their hyper-parameters as objects; the user trusts this file.
    warnings.warn(f"{path.name} holds pickled Python objects besides tensors; loading it with "
                  "weights_only=False because trust_pickle=True.", stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{unreadable} ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def load_ssl_resnet(path, arch: str = "resnet50", how_to_get: str = "", *,
                    trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """A torchvision ResNet (`arch`) with the checkpoint's backbone and `fc = Identity`.

    Returns the model (eval mode, pooled features out) and a report: the file,
    the detected format, the number of tensors loaded and how many were stripped (not backbone keys).
    Raises MissingDataError when the file is absent and CheckpointError when
    it is unreadable, pickles objects without `trust_pickle`, or when anything
    but the classifier is missing or anything is left over.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{arch} SSL checkpoint", path, how_to_get or "Download it and put it there.")
    raw = _unwrap(_read(path, trust_pickle, how_to_get))
    weights, fmt = backbone_state_dict(raw)
    model = torchvision_model(arch, weights=None)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches are raised even with strict=False
        raise CheckpointError(f"{path} ({fmt} format) does not fit torchvision's {arch}: {err}") from None
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing != CLASSIFIER_KEYS or unexpected:
        extra = sorted(missing - CLASSIFIER_KEYS)
        raise CheckpointError(
            f"{path} ({fmt} format) is not a complete {arch} backbone: "
            f"{len(extra)} backbone tensors missing {extra[:6]}, {len(unexpected)} unexpected "
            f"{sorted(unexpected)[:6]}. Only the classifier (fc.weight, fc.bias) may be missing; "
            "check the architecture and that the file is a backbone checkpoint.")
    model, _ = headless(model)
    model.eval()
    report = {"path": str(path), "format": fmt, "arch": arch, "tensors_loaded": len(weights),
              "tensors_in_file": len(raw), "stripped": len(raw) - len(weights)}
    return model, report
