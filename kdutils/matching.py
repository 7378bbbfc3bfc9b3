"""Binary image-text matchers (study 2): a CLIP teacher, two-tower students, BCE and KD training.

Every matcher takes a batch from `pairs.PairDataset` (a dict with the image
and the caption tokenized for each reader) and returns one logit per pair:
"does this caption describe this image?".

* `ClipMatcher` (teacher): logit = w * cos(image, caption) + b on a
  `CLIPModel`, w initialised from CLIP's logit scale, all of it fine-tuned.
* `TwoTowerMatcher` (students): an image encoder (a ResNet without its
  classifier) and a mean-pooled text encoder (MiniLM style), then a head:
  - `additive`, the paper's: `Linear(concat(u, v)) = a(image) + b(caption)`.
    With random negatives a matched and a mismatched pair draw image and
    caption from the same marginals, so this score has the same mean in
    both classes: the architecture cannot represent "these two agree".
  - `interaction`: `[u', v', u'*v', |u'-v'|]` of projected features into a
    small MLP, which can compare the two (the usual sentence-pair head).

Training is `train.train` with a distiller (`kdutils.distillers`): BCE on the
labels, or the paper's two KD losses against cached teacher logits. The
teacher and the students' starting encoders of each profile are built in
`kdutils.matching_models`.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .cache import cache_root, cached, code_fingerprint, content_digest, key_digest, model_fingerprint
from .checkpoint import History
from .clip import image_embeds, text_embeds
from .distillers import BinaryCrossEntropy, Distiller
from .errors import ConfigError
from .frozen import outputs
from .parallel import launch
from .recipes import Recipe
from .train import seed_everything, train

__all__ = ["ClipMatcher", "TwoTowerMatcher", "pairs_fingerprint", "predict_logits",
           "teacher_logits", "train_matcher", "calibrate_bias", "matching_report", "additive_score_analysis",
           "predict_additive_parts", "equivalent_sigmoid_alpha"]


class ClipMatcher(nn.Module):
    """CLIP as a binary matcher: `w * cos(image, caption) + b`, reading the batch's "teacher" tokens."""

    reader = "teacher"

    def __init__(self, clip_model: nn.Module, scale: float | None = None):
        super().__init__()
        self.clip = clip_model
        init = float(clip_model.logit_scale.detach().exp()) if scale is None else float(scale)
        self.w = nn.Parameter(torch.tensor(init))
        self.b = nn.Parameter(torch.tensor(0.0))

    def cosine(self, batch: dict) -> torch.Tensor:
        img = F.normalize(image_embeds(self.clip, batch["image"]), dim=-1)
        txt = F.normalize(text_embeds(self.clip, batch[f"{self.reader}_ids"], batch[f"{self.reader}_mask"]), dim=-1)
        return (img * txt).sum(-1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.w * self.cosine(batch) + self.b


class TwoTowerMatcher(nn.Module):
    """Image tower + text tower + a matching head (`additive` or `interaction`), one logit per pair."""

    reader = "student"
    HEADS = ("additive", "interaction")

    def __init__(self, image_encoder: nn.Module, image_dim: int, text_encoder: nn.Module, head: str = "additive",
                 width: int = 128, dropout: float = 0.1):
        super().__init__()
        if head not in self.HEADS:
            raise ConfigError(f"matching head must be one of {self.HEADS}, got {head!r}.")
        self.image_encoder, self.text_encoder, self.head_kind = image_encoder, text_encoder, head
        text_dim = int(text_encoder.dim)
        if head == "additive":
            self.head = nn.Linear(image_dim + text_dim, 1)
        else:
            self.project_image = nn.Linear(image_dim, width)
            self.project_text = nn.Linear(text_dim, width)
            self.head = nn.Sequential(nn.Linear(4 * width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 1))
        self.image_dim = image_dim

    def towers(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.image_encoder(batch["image"])
        v = self.text_encoder(batch[f"{self.reader}_ids"], batch[f"{self.reader}_mask"])
        return u, v

    def forward(self, batch: dict) -> torch.Tensor:
        u, v = self.towers(batch)
        if self.head_kind == "additive":
            return self.head(torch.cat([u, v], dim=-1)).squeeze(-1)
        pu, pv = self.project_image(u), self.project_text(v)
        return self.head(torch.cat([pu, pv, pu * pv, (pu - pv).abs()], dim=-1)).squeeze(-1)

    def additive_parts(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The additive head's score split as a(image) + b(caption) (the bias goes with the image part)."""
        if self.head_kind != "additive":
            raise ConfigError("additive_parts exists only for the additive head.")
        u, v = self.towers(batch)
        w = self.head.weight[0]
        return u @ w[:self.image_dim] + self.head.bias[0], v @ w[self.image_dim:]


def pairs_fingerprint(dataset) -> str:
    """Hash of a PairDataset's pairs and images (in-memory bytes, or the key of the files read)."""
    p, split = dataset.pairs, dataset.split
    return content_digest(p.image_index, p.labels, list(p.captions), split.key if split.lazy else split.images)


def _loader(dataset, batch_size: int, shuffle: bool = False, generator=None, num_workers: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       num_workers=num_workers, drop_last=False)


def predict_logits(model: nn.Module, dataset, batch_size: int = 256, device="cpu", num_workers: int = 0,
                   progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """One logit per pair of `dataset`, in order, on the CPU (`frozen.outputs`)."""
    return outputs(model, _loader(dataset, batch_size, num_workers=num_workers), device=device, progress=progress,
                   desc=desc)


def teacher_logits(teacher: nn.Module, dataset, batch_size: int = 256, device="cpu", num_workers: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """The frozen teacher's logit for every pair, cached on disk by (teacher weights, pairs)."""
    key = {"what": "matching-teacher-logits", "teacher": model_fingerprint(teacher),
           "pairs": pairs_fingerprint(dataset)}
    return cached("study2", key, lambda: predict_logits(teacher, dataset, batch_size, device, num_workers, progress,
                                                       "teacher logits"), verbose=False)


@torch.no_grad()
def calibrate_bias(matcher: ClipMatcher, dataset, batch_size: int = 256, device="cpu", num_workers: int = 0) -> float:
    """Set b = -w * (mean cosine over the pairs), so the untrained threshold sits amid the data.

    Labels are not used. Without it, w * cos with CLIP's scale (100 for the
    published model) starts every pair far on the "match" side, and Adam at
    lr 5e-5 would need thousands of steps to move b there.
    """
    matcher.b.zero_()
    cos = outputs(matcher, _loader(dataset, batch_size, num_workers=num_workers), matcher.cosine, device=device)
    matcher.b.fill_(-float(matcher.w.detach()) * float(cos.mean()))
    return float(matcher.b)


def train_matcher(model: nn.Module, train_set, val_set, *, loss: Distiller = BinaryCrossEntropy(),
                  teacher: torch.Tensor | None = None, epochs: int, lr: float, batch_size: int, seed: int,
                  device="cpu", num_workers: int = 0, max_steps: int | None = None, cache_tag: str | None = None,
                  progress: bool = True, desc: str = "train", num_processes: int = 1) -> History:
    """Fine-tune `model` (every parameter) with Adam on `train_set`; validation BCE/accuracy after each epoch.

    `teacher` holds the frozen teacher's logit for each training pair (KD
    losses). With `cache_tag`, the run is checkpointed under the cache, keyed
    by the initial weights, the data, the loss, the teacher logits and the
    schedule: a rerun resumes or returns the finished model at once. With
    `num_processes` > 1 it trains data-parallel (`parallel.launch`); the main
    process's checkpoint brings the result back here, so that needs `cache_tag`.
    """
    if not isinstance(loss, BinaryCrossEntropy) and (teacher is None or len(teacher) != len(train_set)):
        raise ConfigError(f"{loss.name} needs one teacher logit per training pair ({len(train_set)}).")
    if num_processes > 1 and cache_tag is None:
        raise ConfigError("train_matcher with num_processes > 1 needs a cache_tag: the main process's checkpoint is "
                          "how the trained weights reach this process.")
    return launch(_train_matcher, (model, train_set, val_set, loss, teacher, epochs, lr, batch_size, seed, device,
                                   num_workers, max_steps, cache_tag, progress, desc), num_processes)


def _train_matcher(model, train_set, val_set, loss, teacher, epochs, lr, batch_size, seed, device, num_workers,
                   max_steps, cache_tag, progress, desc) -> History:
    """`train_matcher`'s training, run by `launch`."""
    gen = seed_everything(seed)
    checkpoint, key = None, ""
    if cache_tag is not None:
        spec = {"tag": cache_tag, "init": model_fingerprint(model), "train": pairs_fingerprint(train_set),
                "val": pairs_fingerprint(val_set), "loss": loss.config(), "epochs": epochs, "lr": lr,
                "batch": batch_size, "seed": seed, "max_steps": max_steps, "code": code_fingerprint(__name__),
                "teacher": None if teacher is None else content_digest(teacher)}
        key = key_digest(spec)
        checkpoint = cache_root() / "study2" / "runs" / f"{cache_tag}-{key}.pt"
    loader = _loader(train_set, batch_size, shuffle=True, generator=gen, num_workers=num_workers)
    soft = None if teacher is None else teacher.float().to(device)

    def logits_targets_labels(batch):
        return model(batch), None if soft is None else soft[batch["index"]], batch["label"]

    def evaluate():
        z = predict_logits(model, val_set, batch_size * 2, device, num_workers)
        y = val_set.labels
        return {"val_loss": float(F.binary_cross_entropy_with_logits(z, y)),
                "val_acc": metrics.accuracy(y.long(), predict_match(z).long())}

    return train(model, loss, loader, Recipe(optimizer="adam", lr=lr, epochs=epochs, max_steps=max_steps),
                 outputs=logits_targets_labels,
                 log=lambda z, _, y: {"acc": (predict_match(z.detach()).float() == y).float().mean()},
                 evaluate=evaluate, checkpoint=checkpoint, checkpoint_key=key, device=device, desc=desc,
                 progress=progress)


def predict_match(logits: torch.Tensor) -> torch.Tensor:
    """A pair matches when sigmoid(z) >= 0.5, i.e. z >= 0 (the rule of `metrics.binary_report` too)."""
    return logits >= 0


def matching_report(logits: torch.Tensor, pairs) -> dict:
    """The paper's table (accuracy, precision, recall, F1 in %) plus accuracy per pair kind.

    Per kind: "match" is the recall on true pairs; a negative kind ("random",
    "shape", "jaccard"...) is the share of its pairs correctly rejected.
    """
    report = metrics.binary_report(pairs.labels, logits, from_logits=True)
    pred = predict_match(torch.as_tensor(logits)).numpy().astype(np.int64)
    kinds = np.asarray(pairs.kind)
    report["by_kind"] = {str(k): 100.0 * float((pred[kinds == k] == pairs.labels[kinds == k]).mean())
                         for k in np.unique(kinds)}
    return report


def additive_score_analysis(image_part: torch.Tensor, caption_part: torch.Tensor, labels) -> dict:
    """Is the additive score a(image) + b(caption) different between matched and mismatched pairs?

    Means and sample standard deviations (ddof=1) per class of the score and of its two parts,
    Welch's t-test on the score, and the ROC AUC of the score (50 = no
    separation). Equal means with random negatives are the paper's 49%.
    """
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    a, b = image_part.double().numpy(), caption_part.double().numpy()
    s = a + b
    out = {name: {"mean_match": float(x[labels].mean()), "mean_mismatch": float(x[~labels].mean()),
                  "std_match": float(x[labels].std(ddof=1)), "std_mismatch": float(x[~labels].std(ddof=1))}
           for name, x in (("score", s), ("image_part", a), ("caption_part", b))}
    t = stats.ttest_ind(s[labels], s[~labels], equal_var=False)
    out["welch_t"], out["welch_p"] = float(t.statistic), float(t.pvalue)
    out["auc"] = 100.0 * float(roc_auc_score(labels, s))
    return out


def predict_additive_parts(model: TwoTowerMatcher, dataset, batch_size: int = 256, device="cpu",
                           num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(a(image), b(caption)) of an additive student for every pair of `dataset`, on the CPU."""
    both = outputs(model, _loader(dataset, batch_size, num_workers=num_workers),
                   lambda b: torch.stack(model.additive_parts(b), 1), device=device)
    return both[:, 0], both[:, 1]


def equivalent_sigmoid_alpha(T: float, alpha: float) -> tuple[float, float]:
    """(alpha', c): softmax KD at (T, alpha) has c times the gradient of sigmoid KD at (T, alpha').

    For one logit, both distillation terms have the gradient (sigmoid(z_s/T) -
    sigmoid(z_t/T)) / T w.r.t. z_s, but softmax KD multiplies it by T^2. So
    `alpha * T^2 * g + (1 - alpha) * h = c * (alpha' * g + (1 - alpha') * h)`
    with `c = alpha * T^2 + 1 - alpha` and `alpha' = alpha * T^2 / c`. Adam is
    almost invariant to the constant c: the two losses are one family.
    """
    c = alpha * T * T + 1.0 - alpha
    return alpha * T * T / c, c
