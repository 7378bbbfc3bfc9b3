"""Study 1: self-distillation through a text-queried image-text head, and its ablations.

The thesis's recipe, in the order this module provides it:

1. **Frozen encoders** (`Encoders`): a pretrained image encoder that gives a
   token sequence (`ImageEncoder`) and a pretrained text encoder that gives one
   vector per prompt (`TextQueries`). Their outputs never change, so the image
   side is computed once per data split and view (`FrozenFeatures`, cached on
   disk) and every teacher trains on tensors.
2. **Teachers** (`fit_teacher`): the image-text head (`kdutils.text_queried_head`)
   trained with cross-entropy, either the thesis's way (each image queried by
   its own prompt, mode "prompt", or its own caption, mode "caption") or
   label-free (all class prompts as queries, mode "label_free"); and the
   no-text teacher, a linear layer on the encoder's pooled output (mode
   "linear", the Born-Again baseline).
3. **Students** (`fit_student`): a freshly initialised copy of the image
   encoder's architecture plus a linear layer, trained on images only with
   the soft cross-entropy `-sum y_hat log s_hat` against a frozen teacher's
   softmax (the teacher's outputs on every training image and view are
   computed once and cached: `soft_targets`), or with plain cross-entropy on
   the labels (the student trained alone).
4. **Ablations**: repeated generations (a student's outputs become the next
   targets), few-shot subsets (`few_shot_indices`), captions as queries
   (`image_captions`: SynthWorld's true captions, or a captioning model at
   `paper`), and image-text retrieval through a learned projection
   (`retrieval_recalls`).

Augmentation is a horizontal flip only, with the teacher's outputs cached
for both views (`VIEWS`): a student always imitates the teacher's answer for
exactly the image it sees. Captions of the flipped view swap "left" and
"right". Every training run goes through `kdutils.train.fit` with a
checkpoint keyed by everything that defines it, so a rerun resumes or
returns at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import clip as kclip
from . import datasets, metrics
from . import synthworld as sw
from . import text as ktext
from .cache import cache_root, cached, code_fingerprint, key_digest, model_fingerprint
from .errors import ConfigError, MissingDataError
from .text_queried_head import TextQueriedHead
from .distillers import CrossEntropy, SoftTargetKD
from .losses import ClipLoss
from .models import small_resnet, torchvision_model, weights_requirement
from .paths import under
from .pretrain import DATA_SEEDS, pretrain_source, synth_split, world_config
from .published import lookup, recipe
from .frozen import batches, outputs
from .teacher import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher, Normalize
from .train import fit, launch, make_optimizer, per_example, seed_everything, warmup_cosine

__all__ = [
    "VIEWS", "ImageData", "IndexedImages", "load_data", "synthworld_data", "cifar_data", "imagenet_data",
    "imagenet_class_names", "prompt", "paper_requirements", "image_captions", "mirror_text", "labels_of",
    "indices_of", "ImageEncoder", "Student", "TextQueries", "Encoders", "pretrain_small_roberta",
    "FrozenFeatures", "features_of", "HeadClassifier", "fit_teacher", "teacher_logits", "soft_targets",
    "student_optimizer", "fit_student", "student_logits", "student_targets", "topk", "few_shot_indices",
    "retrieval_recalls", "attention_maps", "tensor_digest",
]

VIEWS = ("plain", "hflip")
_SYNTH_TEXT_MAX = 32


def tensor_digest(t: torch.Tensor) -> str:
    """A short hash of a tensor's values (cache keys of runs that depend on a tensor)."""
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(str((t.dtype, tuple(t.shape))).encode() + t.view(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()[:16]


def _texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]


def _epochs(cfg, epochs: int) -> int:
    """Dry runs do one epoch of two steps per phase."""
    return 1 if cfg.dry_run else epochs


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _flip(x: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Flip the images whose view is 1 (hflip), per sample."""
    return torch.where(view.view(-1, 1, 1, 1).bool(), x.flip(-1), x)


# ----------------------------------------------------------------------------- data

class IndexedImages(torch.utils.data.Dataset):
    """uint8 images (N, 3, H, W) held in memory; an item is (image, label, index)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, torch.as_tensor(labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


class _IndexedFolder(torch.utils.data.Dataset):
    """An ImageFolder (transform giving uint8 tensors) whose items are (image, label, index)."""

    def __init__(self, folder):
        self.folder = folder
        self.labels = torch.tensor(folder.targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image, label = self.folder[i]
        return image, label, i


def labels_of(dataset) -> torch.Tensor:
    """Labels of a data set or a `Subset` of one, without loading images."""
    if isinstance(dataset, torch.utils.data.Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return dataset.labels


def indices_of(dataset) -> torch.Tensor:
    """The indices (into the full split) of the items of a data set or `Subset`."""
    if isinstance(dataset, torch.utils.data.Subset):
        return torch.as_tensor(dataset.indices).long()
    return torch.arange(len(dataset))


def _in_order(dataset, batch_size: int = 512, num_workers: int | None = None):
    """An iterator over in-order batches, for `frozen.outputs`.

    An iterator, not the loader: `outputs`' tqdm.auto bar calls `iter()` on
    what it wraps, so a loader would be started twice, drawing twice from the
    global RNG (every later random number would move) and starting its workers
    twice. By default image files (ImageNet) are decoded by worker processes,
    tensors in memory are not.
    """
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if isinstance(base, _IndexedFolder) else 0
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))


@dataclass
class ImageData:
    """One data set of the grid: splits of (uint8 image, label, index) items, class names and prompts.

    `val` drives the training curves only (nothing is selected on it); the
    real data sets have no validation split, so there it is the test split.
    `captions` holds SynthWorld's true captions; at `paper` they come from a
    captioning model (`image_captions`).
    """

    name: str
    class_names: list[str]
    prompts: list[str]
    splits: dict
    key: dict
    captions: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prompt(class_name: str) -> str:
    """The thesis's prompt: "This is an image of a [class]."."""
    name = class_name.replace("_", " ")
    return f"This is an image of {'an' if name[0].lower() in 'aeiou' else 'a'} {name}."


def _in_memory(images_nhwc, labels) -> IndexedImages:
    return IndexedImages(torch.as_tensor(images_nhwc).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(labels))


def synthworld_data(cfg) -> ImageData:
    splits, captions, sizes = {}, {}, {}
    for split in ("train", "val", "test"):
        batch = synth_split(cfg, f"target_{split}")
        splits[split] = _in_memory(batch.images, batch.labels)
        captions[split] = list(batch.captions)
        sizes[split] = len(batch)
    key = {"data": "synthworld-target", "world": asdict(world_config(cfg)), "sizes": sizes,
           "seeds": {s: DATA_SEEDS[f"target_{s}"] for s in sizes}}
    return ImageData("synthworld", list(sw.TARGET_CLASSES), sw.class_prompts("target"), splits, key, captions)


def _cifar_root(cfg) -> Path:
    return under(cfg.data_root, ".")


def cifar_data(cfg, name: str) -> ImageData:
    root = _cifar_root(cfg)
    verify = not cfg.dry_run  # dry runs read fixture batches written in the official format
    train = datasets.cifar(root, name, train=True, verify=verify)
    test = datasets.cifar(root, name, train=False, verify=verify)
    classes = [c.replace("_", " ") for c in train.classes]
    test_set = _in_memory(test.data, test.targets)
    splits = {"train": _in_memory(train.data, train.targets), "val": test_set, "test": test_set}
    key = {"data": name, "root": str(root), "sizes": {"train": len(train), "test": len(test)}}
    return ImageData(name, classes, [prompt(c) for c in classes], splits, key,
                     notes=[f"{name}: no validation split; the curves use the test split (nothing is selected on it)."])


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names in wnid-sorted order (torchvision's metadata, no download)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def imagenet_data(cfg) -> ImageData:
    import torchvision.transforms as T

    root = under(cfg.data_root, cfg.s1_imagenet_dir)
    size = cfg.image_size
    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])
    how = ("Download ILSVRC2012 from https://image-net.org and arrange train/ and val/ as one folder per "
           f"wnid (val with the usual valprep.sh) under '{root}'.")
    train = datasets.image_folder(root / "train", tf, how_to_get=how)
    val = datasets.image_folder(root / "val", tf, classes=train.classes, how_to_get=how)
    names = imagenet_class_names()
    if len(train.classes) != len(names):
        raise ConfigError(f"ImageNet at '{root / 'train'}' has {len(train.classes)} class folders; the grid needs all "
                          f"{len(names)} (class names come from torchvision's wnid-sorted list).")
    test_set = _IndexedFolder(val)
    splits = {"train": _IndexedFolder(train), "val": test_set, "test": test_set}
    key = {"data": "imagenet", "root": str(root), "size": size,
           "sizes": {"train": len(train), "val": len(val)}}
    return ImageData("imagenet", names, [prompt(c) for c in names], splits, key,
                     notes=["imagenet: the curves use the validation split, which is also the test split."])


def load_data(cfg, name: str) -> ImageData:
    """One data set of the grid: 'synthworld' (tiny/small) or 'cifar10', 'cifar100', 'imagenet' (paper)."""
    if name == "synthworld":
        return synthworld_data(cfg)
    if name in ("cifar10", "cifar100"):
        return cifar_data(cfg, name)
    if name == "imagenet":
        return imagenet_data(cfg)
    raise ConfigError(f"unknown data set '{name}' in s1_datasets; choose synthworld, cifar10, cifar100 or imagenet.")


def _clip_path(cfg, image_encoder: str) -> tuple[Path, str]:
    repo = cfg.s1_clip_b16 if image_encoder == "vit_b_16" else cfg.s1_clip_b32
    return under(cfg.weights_root, repo), repo


def paper_requirements(cfg) -> dict:
    """Everything the `paper` grid reads, as {what: (path, how to get it)} for `session.require_files`."""
    req = {}
    root = _cifar_root(cfg)
    for name in cfg.s1_datasets:
        if name in ("cifar10", "cifar100"):
            folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
            url = f"https://www.cs.toronto.edu/~kriz/{'cifar-10' if name == 'cifar10' else 'cifar-100'}-python.tar.gz"
            req[f"{name} python batches"] = (folder, f"Download {url} and extract it into '{root}'.")
        elif name == "imagenet":
            im = under(cfg.data_root, cfg.s1_imagenet_dir)
            how = "Download ILSVRC2012 from https://image-net.org; one folder per wnid in train/ and val/."
            req["ImageNet train folder"] = (im / "train", how)
            req["ImageNet val folder"] = (im / "val", how)
        else:
            raise ConfigError(f"s1_datasets at paper holds '{name}'; choose cifar10, cifar100 or imagenet.")
    clip_encoders = {e for e in cfg.s1_image_encoders if e in ("vit_b_32", "vit_b_16")}
    if "clip" in cfg.s1_text_encoders and "resnet50" in cfg.s1_image_encoders:
        clip_encoders.add("vit_b_32")  # ResNet-50 reads prompts with ViT-B/32's text tower
    for enc in sorted(clip_encoders):
        path, repo = _clip_path(cfg, enc)
        req[f"CLIP {repo}"] = (path, ktext.hf_download_hint(repo, path))
    for enc in cfg.s1_image_encoders:
        if enc not in ("vit_b_32", "vit_b_16", "resnet50"):
            raise ConfigError(f"s1_image_encoders at paper holds '{enc}'; choose vit_b_32, vit_b_16 or resnet50.")
    if "resnet50" in cfg.s1_image_encoders and not cfg.dry_run:
        req[f"torchvision resnet50 {cfg.s1_resnet50_weights} weights"] = weights_requirement(
            "resnet50", cfg.s1_resnet50_weights)
    if "roberta" in cfg.s1_text_encoders:
        path = under(cfg.weights_root, cfg.s1_roberta)
        req[f"RoBERTa {cfg.s1_roberta}"] = (path, ktext.hf_download_hint(cfg.s1_roberta, path))
    if cfg.s1_captions:
        path = under(cfg.weights_root, cfg.s1_captioner)
        req[f"captioning model {cfg.s1_captioner}"] = (
            path, ktext.hf_download_hint(cfg.s1_captioner, path) + " Or set s1_captions=False.")
    return req


_MIRROR = {"left": "right", "right": "left"}


def mirror_text(text: str) -> str:
    """The caption of the horizontally flipped image: 'left' and 'right' swapped."""
    return re.sub(r"\b(left|right)\b", lambda m: _MIRROR[m.group(1)], text)


def image_captions(cfg, data: ImageData, split: str, device) -> list[str]:
    """One caption per image of `split`: SynthWorld's true captions, else a captioning model's (cached).

    The `paper` hook reads a BLIP checkpoint (`s1_captioner`, a folder written
    by `save_pretrained`) through transformers; a missing checkpoint raises
    MissingDataError naming the folder and the download command.
    """
    if data.captions is not None:
        return data.captions[split]
    from transformers import AutoProcessor, BlipForConditionalGeneration

    path = under(cfg.weights_root, cfg.s1_captioner)
    hint = ktext.hf_download_hint(cfg.s1_captioner, path) + " Or set s1_captions=False."
    with ktext.quiet_transformers():
        try:
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise MissingDataError(f"captioning model {cfg.s1_captioner}", path,
                                   f"{hint} [{type(err).__name__}]") from None
    model.eval().to(device)
    dataset = data.splits[split]
    key = {"what": "s1-captions", "model": model_fingerprint(model), "data": data.key, "split": split,
           "n": len(dataset), "dry_run": cfg.dry_run}

    @torch.no_grad()
    def compute():
        out = []
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
        for images, _, _ in tqdm(loader, desc=f"caption {data.name} {split}", leave=False, disable=not cfg.progress):
            inputs = processor(images=list(images), return_tensors="pt").to(device)
            ids = model.generate(**inputs, max_new_tokens=30)
            out += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    return cached("s1-captions", key, compute)


# ----------------------------------------------------------------------------- encoders

def _resnet_feature_map(net, x: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet up to layer4 (the last feature map, before pooling)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class ImageEncoder(FrozenTeacher):
    """A frozen pretrained image encoder (a `FrozenTeacher`): [0, 1] images -> (tokens (N, T, D), pooled (N, P)).

    Tokens are the head's keys and values: ViT patch tokens (class token
    dropped) or the last feature map flattened to H*W tokens. `pooled` is the
    encoder's own summary, the input of the no-text teacher and of the probe:
    CLIP's post-LayerNorm class token, the ResNet's global average pool.
    `student_spec` describes the architecture a fresh student copies. The
    default normalisation (mean 0, std 1) leaves images as they are (the
    SmallResNets were trained on [0, 1] images).
    """

    def __init__(self, name: str, kind: str, net: nn.Module, student_spec: dict, description: str, *,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size: int | None = None):
        if kind not in ("small_resnet", "torchvision_resnet", "clip_vision"):
            raise ConfigError(f"unknown image encoder kind '{kind}'.")
        super().__init__(net, mean, std, input_size)
        self.name, self.kind, self.student_spec, self.description = name, kind, student_spec, description
        self.fingerprint = model_fingerprint(self)

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images01)
        if self.kind == "small_resnet":
            tokens = self.model.tokens(x)
            return tokens, tokens.mean(1)
        if self.kind == "torchvision_resnet":
            tokens = _resnet_feature_map(self.model, x).flatten(2).transpose(1, 2)
            return tokens, tokens.mean(1)
        out = self.model(pixel_values=x)
        return out.last_hidden_state[:, 1:], out.pooler_output


class Student(nn.Module):
    """A freshly initialised copy of an image encoder's architecture plus a linear layer over classes."""

    def __init__(self, spec: dict, num_classes: int):
        super().__init__()
        self.kind = spec["kind"]
        if self.kind == "small_resnet":
            self.backbone = small_resnet(spec["arch"])
            dim = self.backbone.feature_dim
            self.preprocess = nn.Identity()
        elif self.kind == "torchvision_resnet":
            self.backbone = torchvision_model(spec["arch"], None)
            dim = self.backbone.fc.in_features
            self.backbone.fc = nn.Identity()
            self.preprocess = Normalize(IMAGENET_MEAN, IMAGENET_STD, spec["input_size"])
        elif self.kind == "clip_vision":
            from transformers import CLIPVisionConfig, CLIPVisionModel

            with ktext.quiet_transformers():
                self.backbone = CLIPVisionModel(CLIPVisionConfig(**spec["config"]))
            dim = spec["config"]["hidden_size"]
            self.preprocess = Normalize(CLIP_MEAN, CLIP_STD, spec["config"]["image_size"])
        else:
            raise ConfigError(f"unknown student kind '{self.kind}'.")
        self.feature_dim = dim
        self.fc = nn.Linear(dim, num_classes)

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images01)
        if self.kind == "small_resnet":
            return self.backbone.features(x)
        if self.kind == "torchvision_resnet":
            return self.backbone(x)
        return self.backbone(pixel_values=x).pooler_output

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images01))


class TextQueries:
    """A frozen text encoder: a list of texts -> one vector per text (the head's queries), on the CPU.

    `encode(texts)` runs `model` (the module put in eval mode while it encodes).
    """

    def __init__(self, name: str, model: nn.Module, encode, dim: int, fingerprint: str, description: str):
        self.name, self.model, self._encode, self.dim = name, model, encode, dim
        self.fingerprint, self.description = fingerprint, description

    def __call__(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode.")
        return outputs(self.model, batches(texts, batch_size), self._encode)

    def cached(self, texts: Sequence[str]) -> torch.Tensor:
        """Encodings of many texts (captions), cached on disk by encoder and text."""
        key = {"what": "s1-text", "encoder": self.fingerprint, "texts": _texts_digest(texts), "n": len(texts)}
        return cached("s1-text", key, lambda: self(texts), verbose=False)


def pretrain_small_roberta(cfg, seed: int = 0, progress: bool | None = None):
    """A small RoBERTa-style encoder trained as a masked language model on SynthWorld source captions; cached.

    Built with `kdutils.text` (word-level tokenizer over SynthWorld's closed
    vocabulary, `small_text_model("roberta")`) plus a linear MLM head: 15% of
    the word tokens become [MASK] and are predicted. Returns the
    `TextEncoder` (mean-pooled) and a summary with the masked-word accuracy on
    source test captions. Cached via the training loop's checkpoint.
    """
    progress = cfg.progress if progress is None else progress
    tokenizer = ktext.build_tokenizer(sw.vocabulary(), max_length=_SYNTH_TEXT_MAX)
    hidden, layers, epochs = cfg.s1_text_hidden, cfg.s1_text_layers, cfg.s1_mlm_epochs
    heads = max(1, hidden // 32)
    key = {"what": "s1-roberta-mlm", "vocab": len(tokenizer), "hidden": hidden, "layers": layers, "heads": heads,
           "world": asdict(world_config(cfg)), "n_train": cfg.n_source_train, "epochs": epochs,
           "batch": cfg.batch_size, "seed": seed, "dry_run": cfg.dry_run, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    gen = seed_everything(seed)
    with ktext.quiet_transformers():
        model = ktext.small_text_model("roberta", len(tokenizer), hidden=hidden, layers=layers, heads=heads,
                                       max_positions=_SYNTH_TEXT_MAX, pad_token_id=tokenizer.pad_token_id)
    lm_head = nn.Linear(hidden, len(tokenizer))
    mlm = nn.ModuleDict({"encoder": model, "lm_head": lm_head})
    if (shipped := lookup("roberta-small", key)) is not None:  # published weights (kdutils.published)
        model.load_state_dict(shipped[0])
        return ktext.TextEncoder(tokenizer, model.eval(), max_length=_SYNTH_TEXT_MAX), shipped[1]
    mask_id, first_word = tokenizer.mask_token_id, len(ktext.SPECIAL_TOKENS)

    def mask(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = (torch.rand(ids.shape, device=ids.device) < 0.15) & (ids >= first_word)
        return ids.masked_fill(chosen, mask_id), ids.masked_fill(~chosen, -100)

    def encode(texts):
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=_SYNTH_TEXT_MAX,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def loss_of(ids, attention):
        inputs, targets = mask(ids)
        hidden_states = model(input_ids=inputs, attention_mask=attention).last_hidden_state
        logits = lm_head(hidden_states)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100), logits, targets

    ids, attention = encode(synth_split(cfg, "source_train").captions)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, attention), batch_size=cfg.batch_size,
                                         shuffle=True, generator=gen, drop_last=True)
    opt = make_optimizer(mlm.parameters(), "adamw", lr=1e-3, weight_decay=0.01)
    steps = max(1, _epochs(cfg, epochs) * min(len(loader), cfg.max_steps or len(loader)))
    sched = warmup_cosine(opt, warmup_steps=min(steps // 10, 100), total_steps=steps)
    history = fit(mlm, loader, lambda b: {"loss": loss_of(*b)[0]}, opt, _epochs(cfg, epochs), scheduler=sched,
                  checkpoint=cache_root() / "s1" / "roberta" / f"{digest}.pt", checkpoint_key=digest,
                  max_steps_per_epoch=cfg.max_steps, desc="MLM small RoBERTa on source captions", progress=progress)
    mlm.eval()
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        tid, tmask = encode(synth_split(cfg, "source_test").captions)
        _, logits, targets = loss_of(tid, tmask)
        chosen = targets != -100
        masked_acc = 100.0 * float((logits.argmax(-1)[chosen] == targets[chosen]).float().mean())
    summary = {"hidden": hidden, "layers": layers, "epochs": epochs, "recipe": recipe(key), "history": history.to_dict(),
               "masked_word_top1_source_test": masked_acc,
               "parameters": sum(p.numel() for p in model.parameters())}
    return ktext.TextEncoder(tokenizer, model.eval(), max_length=_SYNTH_TEXT_MAX), summary


class Encoders:
    """The run's pretrained encoders, each loaded (or pretrained and cached) once, frozen, on `device`.

    tiny/small: `resnet` is the SmallResNet pretrained on SynthWorld's source
    task (`s1_resnet_arch`), `vit` the small CLIP's vision tower (study 2's
    `pretrain_small_clip`); text `clip` is that CLIP's text tower and
    `roberta` a small RoBERTa trained by MLM (`pretrain_small_roberta`).
    paper: `vit_b_32`/`vit_b_16` are CLIP's vision towers, `resnet50` is
    torchvision's ImageNet ResNet-50 (open_clip's CLIP RN50 is not a
    dependency of the lab); text `clip` is the CLIP text tower of the image
    encoder's checkpoint (ViT-B/32's for ResNet-50), `roberta` is roberta-base.
    `seed` is the backbone seed (`cfg.backbone_seed(seed)` of a replicate): the
    pretraining seed of every tiny/small encoder, one set of encoders per
    distinct backbone seed; at `paper` the weights are the downloaded ones.
    """

    def __init__(self, cfg, device, seed: int = 0):
        if cfg.profile == "paper" and len(set(cfg.backbone_seeds)) > 1:
            raise ConfigError(f"backbone_seeds {cfg.backbone_seeds} at paper: the encoders are downloaded weights, "
                              "the same for every seed; use one backbone seed.")
        self.cfg, self.device, self.seed = cfg, torch.device(device), seed
        self._images, self._texts, self._clips = {}, {}, {}
        self.summaries: dict = {}

    def clip(self, image_encoder: str | None = None):
        """(CLIPModel, tokenizer) of the small CLIP, or the paper checkpoint paired with `image_encoder`."""
        cfg = self.cfg
        if cfg.profile != "paper":
            if "small" not in self._clips:
                model, tokenizer, summary = kclip.pretrain_small_clip(cfg, seed=self.seed)
                self.summaries["small_clip"] = summary
                self._clips["small"] = (model.to(self.device).eval(), tokenizer, "small CLIP pretrained on "
                                        f"SynthWorld source captions ({summary['arch']['name']})")
            return self._clips["small"]
        path, repo = _clip_path(cfg, image_encoder or "vit_b_32")
        if repo not in self._clips:
            model, tokenizer = kclip.load_clip(path, allow_random=cfg.dry_run, repo_id=repo)
            self._clips[repo] = (model.to(self.device).eval(), tokenizer, f"CLIP {repo}")
        return self._clips[repo]

    def image(self, name: str) -> ImageEncoder:
        if name in self._images:
            return self._images[name]
        cfg = self.cfg
        small = cfg.profile != "paper"
        if small and name == "resnet":
            net, summary = pretrain_source(cfg.s1_resnet_arch, cfg, seed=self.seed)
            self.summaries["resnet"] = summary
            enc = ImageEncoder(name, "small_resnet", net, {"kind": "small_resnet", "arch": cfg.s1_resnet_arch},
                               f"SmallResNet {cfg.s1_resnet_arch} pretrained on SynthWorld source "
                               f"(source top-1 {summary['source_top1']:.1f}%)")
        elif (small and name == "vit") or (not small and name in ("vit_b_32", "vit_b_16")):
            model, _, description = self.clip(name)
            vc = model.config.vision_config
            spec = {"kind": "clip_vision", "config": {k: v for k, v in vc.to_dict().items()
                                                      if k in _VISION_CONFIG_KEYS}}
            enc = ImageEncoder(name, "clip_vision", model.vision_model, spec, f"vision tower of {description}",
                               mean=CLIP_MEAN, std=CLIP_STD, input_size=vc.image_size)
        elif not small and name == "resnet50":
            net = torchvision_model("resnet50", cfg.s1_resnet50_weights, allow_random=cfg.dry_run)
            enc = ImageEncoder(name, "torchvision_resnet", net,
                               {"kind": "torchvision_resnet", "arch": "resnet50", "input_size": cfg.image_size},
                               f"torchvision resnet50 {cfg.s1_resnet50_weights}"
                               f"{' (random weights: dry run)' if cfg.dry_run else ''}; open_clip RN50 not used "
                               "(not a dependency of the lab)",
                               mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=cfg.image_size)
        else:
            known = "resnet, vit" if small else "vit_b_32, vit_b_16, resnet50"
            raise ConfigError(f"unknown image encoder '{name}' at profile {cfg.profile}; choose {known}.")
        self._images[name] = enc.to(self.device)
        return enc

    def text(self, name: str, image_encoder: str | None = None) -> TextQueries:
        """Text encoder `name` ('clip' or 'roberta'); CLIP's text tower is paired with `image_encoder` at paper."""
        cfg = self.cfg
        if name == "clip":
            model, tokenizer, description = self.clip(image_encoder if cfg.profile == "paper" else None)
            tag = f"clip:{description}"
            if tag not in self._texts:
                fp = model_fingerprint(model.text_model) + model_fingerprint(model.text_projection)
                self._texts[tag] = TextQueries(
                    "clip", model, lambda texts: kclip.encode_texts(model, tokenizer, texts),
                    model.config.projection_dim, fp, f"text tower of {description} (projected, L2-normalised)")
            return self._texts[tag]
        if name == "roberta":
            if "roberta" not in self._texts:
                if cfg.profile == "paper":
                    path = under(cfg.weights_root, cfg.s1_roberta)
                    encoder = ktext.load_text_encoder(path, allow_random=cfg.dry_run, repo_id=cfg.s1_roberta)
                    description = f"{cfg.s1_roberta} (mean-pooled)"
                else:
                    encoder, summary = pretrain_small_roberta(cfg, seed=self.seed)
                    self.summaries["roberta"] = summary
                    description = (f"small RoBERTa ({summary['hidden']}-d, {summary['layers']} layers), MLM on "
                                   f"source captions (masked-word top-1 {summary['masked_word_top1_source_test']:.1f}%),"
                                   " mean-pooled")
                encoder = encoder.to(self.device).eval()
                self._texts["roberta"] = TextQueries("roberta", encoder, encoder.encode, encoder.dim,
                                                     model_fingerprint(encoder.model), description)
            return self._texts["roberta"]
        raise ConfigError(f"unknown text encoder '{name}'; choose clip or roberta.")


_VISION_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                       "patch_size", "num_channels", "hidden_act", "layer_norm_eps", "projection_dim")


# ----------------------------------------------------------------------------- frozen features

class FrozenFeatures:
    """A frozen encoder's (tokens, pooled) for every item and view of one split.

    Cached in memory and on disk (tokens in float16) when they fit in
    `cache_mb` (the profile's `s1_feature_cache_mb`); otherwise (ViT-B/16 on
    ImageNet) computed per batch by the encoder, which is the same computation
    without the storage. The one-off pass reads batches of at least 256 images.
    """

    def __init__(self, encoder: ImageEncoder, dataset, data_key: dict, split: str, views: int, device, *,
                 cache_mb: float, batch_size: int = 256, num_workers: int = 0, progress: bool = False):
        self.encoder, self.views, self.device = encoder, views, torch.device(device)
        self.key = {"encoder": encoder.fingerprint, "data": data_key, "split": split, "views": views,
                    "in_memory": None}
        first = _to_unit(dataset[0][0].unsqueeze(0)).to(self.device)
        tokens, pooled = encoder(first)
        self.num_tokens, self.token_dim, self.pooled_dim = tokens.shape[1], tokens.shape[2], pooled.shape[1]
        mb = len(dataset) * views * (self.num_tokens * self.token_dim * 2 + self.pooled_dim * 4) / 2**20
        self.in_memory = mb <= cache_mb
        self.key["in_memory"] = self.in_memory  # stored tokens are float16: teachers trained on them differ slightly
        self.tokens = self.pooled = None
        if self.in_memory:
            stored = cached("s1-features", self.key, lambda: self._extract(
                dataset, max(batch_size, 256), num_workers, split, progress), verbose=False)
            self.tokens, self.pooled = stored["tokens"], stored["pooled"]

    def _extract(self, dataset, batch_size: int, num_workers: int, split: str, progress: bool) -> dict:
        """Every item's tokens (float16) and pooled output in every view, one `frozen.outputs` pass per view."""
        size = self.num_tokens * self.token_dim
        toks, pools = [], []
        for v in range(self.views):
            def flat_outputs(batch):
                x = _to_unit(batch[0].to(self.device))
                return torch.cat([t.flatten(1) for t in self.encoder(x.flip(-1) if v else x)], dim=1)

            flat = outputs(self.encoder, _in_order(dataset, batch_size, num_workers), flat_outputs, progress=progress,
                           desc=f"{self.encoder.name} {split} [{VIEWS[v]}]")
            toks.append(flat[:, :size].reshape(-1, self.num_tokens, self.token_dim).half())
            pools.append(flat[:, size:])
        return {"tokens": torch.stack(toks), "pooled": torch.stack(pools)}

    def __call__(self, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor):
        """(tokens, pooled) as float32 on the device for a batch of items in the given views."""
        if self.in_memory:
            i, v = index.cpu(), view.cpu()
            return self.tokens[v, i].to(self.device).float(), self.pooled[v, i].to(self.device)
        return self.encoder(_flip(_to_unit(images.to(self.device)), view.to(self.device)))


def features_of(feats: FrozenFeatures, dataset, view: int = 0, batch_size: int = 512):
    """Pooled features (N, P) of the items of `dataset` (a split or a subset) in one view, on the CPU."""
    if feats.in_memory:
        return feats.pooled[view, indices_of(dataset)]
    return outputs(feats.encoder, _in_order(dataset, batch_size),
                   lambda b: feats(b[0], b[2], torch.full_like(b[2], view))[1])


# ----------------------------------------------------------------------------- teachers

class HeadClassifier(nn.Module):
    """What trains on frozen features: a linear layer (no text) or the image-text head in one of its modes.

    Modes: "linear" (LayerNorm + linear on the pooled output), "prompt" (the
    thesis: each image queried with its own class prompt), "caption" (the
    thesis with each image's own caption), "label_free" (all class prompts
    query every image). `label_free_scores` evaluates any head without labels.
    """

    MODES = ("linear", "prompt", "caption", "label_free")

    def __init__(self, mode: str, module: nn.Module, class_queries: torch.Tensor | None = None):
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError(f"teacher mode must be one of {self.MODES}, got '{mode}'.")
        if mode != "linear" and class_queries is None:
            raise ConfigError(f"teacher mode '{mode}' needs the class prompts' encodings.")
        self.mode, self.module = mode, module
        self.register_buffer("class_queries", class_queries if class_queries is not None else torch.empty(0))

    @property
    def has_text(self) -> bool:
        return self.mode != "linear"

    def forward(self, tokens, pooled, labels, queries=None, return_attention: bool = False):
        if self.mode == "linear":
            return self.module(pooled)
        if self.mode == "label_free":
            return self.module.class_scores(tokens, self.class_queries, return_attention)
        if self.mode == "prompt":
            queries = self.class_queries[labels]
        elif queries is None:
            raise ValueError("the caption teacher needs each image's caption encoding.")
        return self.module.own_prompt_logits(tokens, queries, return_attention)

    def label_free_scores(self, tokens, return_attention: bool = False):
        if not self.has_text:
            raise ValueError("the linear teacher has no prompts to score.")
        return self.module.class_scores(tokens, self.class_queries, return_attention)


def _loader(dataset, cfg, shuffle: bool, generator=None, batch_size: int | None = None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=cfg.num_workers,
                                       drop_last=shuffle and len(dataset) >= 4 * (batch_size or cfg.batch_size))


def _train_loader(dataset, cfg, generator, epochs: int, steps: int | None, batch_size: int):
    """(loader, epochs, total steps): shuffled epochs, or with a step budget (few-shot) one epoch of `steps`
    batches drawn with replacement, so 10 images and 500 images train for the same number of steps."""
    if steps is None:
        loader = _loader(dataset, cfg, shuffle=True, generator=generator, batch_size=batch_size)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * batch_size,
                                                 generator=generator)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                             num_workers=cfg.num_workers)
        epochs = 1
    epochs = _epochs(cfg, epochs)
    return loader, epochs, max(1, epochs * min(len(loader), cfg.max_steps or len(loader)))


def fit_teacher(mode: str, feats: FrozenFeatures, train_set, cfg, *, seed: int, num_classes: int,
                class_queries: torch.Tensor | None = None, caption_table: torch.Tensor | None = None,
                val: tuple | None = None, epochs: int | None = None, steps: int | None = None, desc: str = "teacher"):
    """Train a teacher on frozen features with cross-entropy; return (HeadClassifier, History).

    `caption_table` (views, N, text_dim) holds the caption encodings of the
    training split (mode "caption"). `val` = (features, dataset, caption
    table or None) adds per-epoch validation accuracy to the history: with
    the true prompt ("val_top1_true_prompt", leakage for a text head) and
    label-free ("val_top1"). `steps` replaces `epochs` by a step budget.
    """
    device = feats.device
    gen = seed_everything(seed)
    if mode == "linear":
        module = nn.Sequential(nn.LayerNorm(feats.pooled_dim), nn.Linear(feats.pooled_dim, num_classes))
    else:
        module = TextQueriedHead(feats.token_dim, class_queries.shape[1], num_classes, dim=cfg.s1_head_dim,
                               heads=cfg.s1_head_heads)
    teacher = HeadClassifier(mode, module, None if class_queries is None else class_queries.float()).to(device)
    loader, epochs, total = _train_loader(train_set, cfg, gen, epochs or cfg.s1_head_epochs, steps, cfg.batch_size)
    opt = make_optimizer(teacher.parameters(), "adamw", lr=cfg.s1_head_lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, warmup_steps=min(total // 10, 200), total_steps=total)
    table = caption_table.to(device) if caption_table is not None else None
    distiller = CrossEntropy()

    def compute_loss(batch):
        images, labels, index = batch
        view = torch.randint(0, feats.views, (len(labels),), device=labels.device)
        tokens, pooled = feats(images, index, view)
        queries = table[view, index] if table is not None else None
        return distiller(teacher(tokens, pooled, labels, queries), None, labels)

    def evaluate():
        vfeats, vset, vtable = val
        out = {}
        logits, labels = teacher_logits(teacher, vfeats, vset, "own", vtable)
        if teacher.has_text and mode != "label_free":
            out["val_top1_true_prompt"] = metrics.accuracy(labels, logits)
            logits, labels = teacher_logits(teacher, vfeats, vset, "label_free")
        out["val_top1"] = metrics.accuracy(labels, logits)
        return out

    key = {"what": "s1-teacher", "mode": mode, "features": feats.key, "subset": tensor_digest(indices_of(train_set)),
           "queries": tensor_digest(class_queries) if class_queries is not None else None,
           "captions": tensor_digest(caption_table) if caption_table is not None else None,
           "epochs": epochs, "steps": total, "lr": cfg.s1_head_lr, "dim": cfg.s1_head_dim, "heads": cfg.s1_head_heads,
           "batch": cfg.batch_size, "seed": seed, "dry_run": cfg.dry_run, "val": val is not None,
           "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    history = fit(teacher, loader, compute_loss, opt, epochs, scheduler=sched,
                  evaluate=evaluate if val is not None else None, checkpoint=cache_root() / "s1" / "teachers" /
                  f"{digest}.pt", checkpoint_key=digest, device=device, max_steps_per_epoch=cfg.max_steps,
                  desc=desc, progress=cfg.progress)
    return teacher.eval(), history


def teacher_logits(teacher: HeadClassifier, feats: FrozenFeatures, dataset, how: str = "own",
                   caption_table: torch.Tensor | None = None, view: int = 0, batch_size: int = 512):
    """(logits (N, C), labels) of a teacher over a split in one view, on the CPU.

    how="own": the teacher as trained (a text head queried with each image's
    true prompt or caption: label leakage); how="label_free": every class
    prompt queries the image, no label used.
    """
    if how not in ("own", "label_free"):
        raise ValueError(f"how must be 'own' or 'label_free', got '{how}'.")

    def logits(batch):
        images, labels, index = batch
        tokens, pooled = feats(images, index, torch.full_like(index, view))
        if how == "label_free":
            return teacher.label_free_scores(tokens)
        queries = caption_table[view, index].to(feats.device) if caption_table is not None else None
        return teacher(tokens, pooled, labels.to(feats.device), queries)

    return outputs(teacher, _in_order(dataset, batch_size), logits), labels_of(dataset)


def _per_view_table(train_set, views: int, logits_in_view) -> torch.Tensor:
    """(views, N_split, C) float16 of `logits_in_view(v)` over `train_set`; rows outside a subset stay zero."""
    n = len(train_set.dataset) if isinstance(train_set, torch.utils.data.Subset) else len(train_set)
    per_view = [logits_in_view(v) for v in range(views)]
    out = torch.zeros(views, n, per_view[0].shape[1], dtype=torch.float16)
    for v, logits in enumerate(per_view):
        out[v, indices_of(train_set)] = logits.half()
    return out


def soft_targets(teacher: HeadClassifier, feats: FrozenFeatures, train_set, caption_table=None) -> torch.Tensor:
    """The frozen teacher's logits on every training item and view, (views, N_split, C) float16; cached.

    Rows of items outside `train_set` (a few-shot subset) stay zero. The
    student's target is their softmax (`fit_student`).
    """
    key = {"what": "s1-soft-targets", "teacher": model_fingerprint(teacher), "mode": teacher.mode,
           "features": feats.key, "subset": tensor_digest(indices_of(train_set)),
           "captions": tensor_digest(caption_table) if caption_table is not None else None}
    return cached("s1-soft-targets", key, lambda: _per_view_table(train_set, feats.views, lambda v: teacher_logits(
        teacher, feats, train_set, "own", caption_table, view=v)[0]), verbose=False)


# ----------------------------------------------------------------------------- students

def student_optimizer(student: "Student", cfg) -> tuple[str, float, float]:
    """(optimiser, lr, weight decay) by architecture: SGD with momentum for ResNets, AdamW for ViTs.

    The usual recipes of each family (a ViT trained from scratch with SGD
    barely learns); measured on SynthWorld, SGD 0.1 at batch 64 took a
    SmallResNet from 48% (AdamW 2e-3, batch 128) to 71% in five epochs.
    """
    if student.kind == "clip_vision":
        return "adamw", cfg.s1_vit_student_lr, 0.05
    return "sgd", cfg.s1_resnet_student_lr, 5e-4


def fit_student(spec: dict, train_set, cfg, *, data_key: dict, seed: int, num_classes: int, device,
                targets: torch.Tensor | None = None, val_set=None, epochs: int | None = None,
                steps: int | None = None, batch_size: int | None = None, desc: str = "student"):
    """Train a fresh student (`Student(spec)`) on images only; return (Student, History).

    With `targets` (views, N, C teacher logits, see `soft_targets`) the loss is
    the soft cross-entropy against their softmax, in the view the student
    sees; without, plain cross-entropy on the labels (the student alone).
    `student_optimizer` with warm-up and cosine decay; random horizontal flips.
    With `cfg.num_processes` > 1 it trains data-parallel (`train.launch`).
    """
    return launch(_fit_student, (spec, train_set, cfg, data_key, seed, num_classes, device, targets, val_set, epochs,
                                 steps, batch_size, desc), cfg.num_processes)


def _fit_student(spec: dict, train_set, cfg, data_key: dict, seed: int, num_classes: int, device, targets, val_set,
                 epochs, steps, batch_size, desc: str):
    """`fit_student`'s training, run by `launch`."""
    device = torch.device(device)
    gen = seed_everything(seed)
    student = Student(spec, num_classes)
    batch_size = batch_size or cfg.s1_student_batch_size
    loader, epochs, total = _train_loader(train_set, cfg, gen, epochs or cfg.s1_student_epochs, steps, batch_size)
    opt_name, lr, wd = student_optimizer(student, cfg)
    opt = make_optimizer(student.parameters(), opt_name, lr=lr, momentum=0.9, weight_decay=wd)
    sched = warmup_cosine(opt, warmup_steps=min(total // 10, 500), total_steps=total)
    distiller = CrossEntropy() if targets is None else SoftTargetKD()

    def compute_loss(batch):
        images, labels, index = batch
        view = per_example(lambda n: torch.randint(0, len(VIEWS), (n,), device=labels.device), len(labels))
        logits = student(_flip(_to_unit(images), view))
        teacher = None if targets is None else targets[view.cpu(), index.cpu()].to(logits.device)
        return distiller(logits, teacher, labels)

    def evaluate():
        logits, labels = student_logits(student, val_set, device)
        return {"val_top1": metrics.accuracy(labels, logits)}

    key = {"what": "s1-student", "spec": spec, "classes": num_classes, "data": data_key,
           "subset": tensor_digest(indices_of(train_set)), "n": len(train_set),
           "targets": tensor_digest(targets) if targets is not None else None, "epochs": epochs, "steps": total,
           "optimizer": [opt_name, lr, wd], "batch": batch_size, "seed": seed,
           "dry_run": cfg.dry_run, "val": val_set is not None, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    history = fit(student, loader, compute_loss, opt, epochs, scheduler=sched,
                  evaluate=evaluate if val_set is not None else None,
                  checkpoint=cache_root() / "s1" / "students" / f"{digest}.pt", checkpoint_key=digest, device=device,
                  max_steps_per_epoch=cfg.max_steps, desc=desc, progress=cfg.progress)
    return student.eval(), history


def student_logits(student: Student, dataset, device, view: int = 0, batch_size: int = 512,
                   features: bool = False):
    """(logits or penultimate features, labels) of a student over a split in one view, on the CPU."""
    forward = student.features if features else student

    def logits(batch):
        x = _to_unit(batch[0])
        return forward(x.flip(-1) if view else x)

    return outputs(student, _in_order(dataset, batch_size), logits, device=device), labels_of(dataset)


def student_targets(student: Student, train_set, device) -> torch.Tensor:
    """A student's logits on every training item and view (views, N, C) float16: the next generation's targets."""
    return _per_view_table(train_set, len(VIEWS), lambda v: student_logits(student, train_set, device, view=v)[0])


def topk(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 in % (top-5 only when there are more than 5 classes)."""
    out = {"top1": metrics.accuracy(labels, logits)}
    if logits.shape[1] > 5:
        out["top5"] = metrics.topk_accuracy(logits, labels, 5)
    return out


# ----------------------------------------------------------------------------- ablations

def few_shot_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k items per class, nested in k (the 1-shot items are among the 5-shot ones), fixed by `seed`."""
    if k < 1:
        raise ConfigError(f"few-shot k must be >= 1, got {k}.")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        if len(members) < k:
            raise ConfigError(f"class {c} has {len(members)} training images, fewer than k={k}.")
        chosen.append(members[:k])
    return torch.sort(torch.cat(chosen)).values


def retrieval_recalls(train_image: torch.Tensor, train_text: torch.Tensor, test_image: torch.Tensor,
                      test_text: torch.Tensor, *, epochs: int, seed: int, gallery: int, device,
                      max_steps: int | None = None) -> dict:
    """Recall@1/5/10 (%) of test images and captions through a linear projection learned into the text space.

    Image features are standardised with the training set's statistics and
    mapped by one linear layer; the frozen text encodings stay fixed. The
    projection is trained with CLIP's symmetric contrastive loss (learnable
    temperature) on the training pairs for `epochs` (of at most `max_steps`
    batches); the first `gallery` test pairs are ranked
    (`kdutils.clip.retrieval_recalls`, both directions).
    """
    device = torch.device(device)
    gen = seed_everything(seed)
    mean, std = train_image.mean(0, keepdim=True), train_image.std(0, keepdim=True) + 1e-6
    proj = nn.Linear(train_image.shape[1], train_text.shape[1])
    loss_fn = ClipLoss(init_scale=10.0)
    model = nn.ModuleDict({"proj": proj, "loss": loss_fn})
    data = torch.utils.data.TensorDataset((train_image - mean) / std, train_text)
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True, generator=gen, drop_last=len(data) >= 512)
    total = max(1, epochs * min(len(loader), max_steps or len(loader)))
    opt = make_optimizer(model.parameters(), "adamw", lr=1e-2, weight_decay=1e-4)
    fit(model, loader, lambda b: {"loss": loss_fn(proj(b[0]), b[1])}, opt, epochs,
        scheduler=warmup_cosine(opt, min(total // 10, 100), total), device=device,
        max_steps_per_epoch=max_steps, desc="retrieval projection", progress=False)
    n = min(gallery, len(test_image))
    with torch.no_grad():
        image_emb = proj(((test_image[:n] - mean) / std).to(device)).cpu()
    return kclip.retrieval_recalls(image_emb, test_text[:n], ks=(1, 5, 10))


@torch.no_grad()
def attention_maps(teacher: HeadClassifier, feats: FrozenFeatures, dataset, indices: Sequence[int], how: str = "own"):
    """Attention of a text head over image tokens for some items: (n, T) weights and the labels.

    how="own": the query is the image's true class prompt (the thesis's head);
    how="label_free": the map of the highest-scoring class prompt.
    """
    subset = torch.utils.data.Subset(dataset, list(indices))
    images, labels, index = next(iter(torch.utils.data.DataLoader(subset, batch_size=len(subset))))
    tokens, _ = feats(images, index, torch.zeros_like(index))
    labels = labels.to(feats.device)
    if how == "own":
        logits, weights = teacher.module.own_prompt_logits(tokens, teacher.class_queries[labels], True)
        return weights.cpu(), labels.cpu(), logits.argmax(1).cpu()
    scores, weights = teacher.label_free_scores(tokens, True)
    best = scores.argmax(1)
    return weights[torch.arange(len(best)), best].cpu(), labels.cpu(), best.cpu()
