"""Semi-supervised image-text retrieval with a mean teacher (seed draft 002).

The draft proposes a moving-average teacher for the text side of image-text
retrieval when few images come with a caption and many come without; it gives
no method details and no results. This module is the plainest reading of it,
over a frozen CLIP: each side gets a residual adapter (starting as the
identity, so training starts from zero-shot CLIP), trained with CLIP's
symmetric contrastive loss on the few pairs. The **mean teacher** (Tarvainen
and Valpola, 2017) is the exponential moving average of those adapters: for
each *unpaired* image, the teacher's softmax over a bank of captions (the
paired ones) is the target of the student's, each network seeing its own
noisy copy of the image embedding. Compared with the same adapters trained on
the pairs alone, and with zero-shot CLIP.

>>> img, txt = torch.randn(40, 8), torch.randn(40, 8)
>>> model = MeanTeacherRetrieval(dim=8, bank=txt[:10])
>>> sorted(model({"image": img[:10], "text": txt[:10], "unpaired": img[10:]}))
['consistency', 'contrastive', 'loss']
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .augment import as_float_images
from .clip import encode_images, encode_texts, retrieval_recalls
from .recipes import Recipe
from .train import seed_everything, train

__all__ = ["Adapter", "MeanTeacherRetrieval", "clip_embeddings", "train_retrieval", "compare", "recalls"]


class Adapter(nn.Module):
    """x + MLP(x), unit length out; the last layer starts at zero, so the adapter starts as the identity."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.mlp(x), dim=-1)


class MeanTeacherRetrieval(nn.Module):
    """Student adapters trained on pairs, plus (when `consistency` > 0) a mean teacher on unpaired images.

    forward(batch) -> {"loss", "contrastive", "consistency"}: the contrastive loss of the paired batch
    (learnable temperature, as CLIP) plus w(step) x KL(teacher || student) of the unpaired images' softmax
    over the caption `bank` at `temperature`. The teacher follows the student by EMA, updated before each
    step, and never gets a gradient. As in Tarvainen and Valpola's code, the EMA decay warms up as
    min(`decay`, 1 - 1 / (step + 1)) and the weight ramps up as `consistency` x exp(-5 (1 - t)^2) over the
    first `rampup_steps` steps: a teacher that is still the untrained starting point must not pull the
    student back to it.
    """

    def __init__(self, dim: int, bank: torch.Tensor, *, consistency: float = 1.0, decay: float = 0.99,
                 noise: float = 0.05, temperature: float = 0.05, rampup_steps: int = 1):
        super().__init__()
        self.image, self.text = Adapter(dim), Adapter(dim)
        self.teacher = copy.deepcopy(nn.ModuleDict({"image": self.image, "text": self.text})).requires_grad_(False)
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10, as the retrieval projections elsewhere
        self.register_buffer("bank", bank)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.consistency, self.decay, self.noise, self.temperature = consistency, decay, noise, temperature
        self.rampup_steps = max(1, rampup_steps)

    def consistency_weight(self) -> float:
        t = min(1.0, float(self.step) / self.rampup_steps)
        return self.consistency * math.exp(-5.0 * (1.0 - t) ** 2)

    @torch.no_grad()
    def update_teacher(self) -> None:
        decay = min(self.decay, 1.0 - 1.0 / (float(self.step) + 1.0))
        for t, s in zip(self.teacher.parameters(), [*self.image.parameters(), *self.text.parameters()]):
            t.lerp_(s, 1 - decay)
        self.step += 1

    def forward(self, batch: dict) -> dict:
        logits = self.log_scale.exp() * self.image(batch["image"]) @ self.text(batch["text"]).T
        target = torch.arange(len(logits), device=logits.device)
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        consistency = logits.new_zeros(())
        if self.consistency > 0 and len(batch["unpaired"]):
            self.update_teacher()
            x = batch["unpaired"]
            with torch.no_grad():
                teacher_bank = self.teacher["text"](self.bank)
                teacher_p = (self.teacher["image"](x + self.noise * torch.randn_like(x)) @ teacher_bank.T
                             / self.temperature).softmax(-1)
            student_log_p = (self.image(x + self.noise * torch.randn_like(x)) @ self.text(self.bank).T
                             / self.temperature).log_softmax(-1)
            consistency = F.kl_div(student_log_p, teacher_p, reduction="batchmean")
        weight = self.consistency_weight() if self.training else self.consistency
        return {"loss": contrastive + weight * consistency, "contrastive": contrastive,
                "consistency": consistency}


class _PairsWithUnpaired(torch.utils.data.Dataset):
    """Item i: pair i and `per_pair` unpaired images drawn at random by `generator` (seeded), so that every
    unpaired image is used, each epoch with other pairs."""

    def __init__(self, image, text, unpaired, per_pair: int, generator: torch.Generator):
        self.image, self.text, self.unpaired, self.per_pair, self.generator = image, text, unpaired, per_pair, generator

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i):
        n = len(self.unpaired)
        idx = torch.randint(n, (self.per_pair,), generator=self.generator) if n else []
        return self.image[i], self.text[i], self.unpaired[idx] if n else self.unpaired[:0]


def train_retrieval(image: torch.Tensor, text: torch.Tensor, unpaired: torch.Tensor, *, mean_teacher: bool,
                    epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-3, unpaired_per_pair: int = 4,
                    consistency: float = 1.0, rampup: float = 0.3,
                    device="cpu", max_steps: int | None = None, progress: bool = False) -> MeanTeacherRetrieval:
    """Adapters on frozen CLIP embeddings of the pairs (`image`, `text`); with `mean_teacher`, `unpaired` too
    (consistency weight `consistency`, ramped up over the first `rampup` share of the steps)."""
    gen = seed_everything(seed)
    data = _PairsWithUnpaired(image, text, unpaired if mean_teacher else unpaired[:0], unpaired_per_pair,
                              torch.Generator().manual_seed(seed + 10_000))  # apart from the loader's order
    steps = epochs * max(1, len(data) // batch_size)
    model = MeanTeacherRetrieval(image.shape[1], text, consistency=consistency if mean_teacher else 0.0,
                                 rampup_steps=int(rampup * steps))
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(data) > batch_size,
        collate_fn=lambda items: {"image": torch.stack([a for a, _, _ in items]),
                                  "text": torch.stack([b for _, b, _ in items]),
                                  "unpaired": torch.cat([c for _, _, c in items])})
    recipe = Recipe(optimizer="adamw", lr=lr, weight_decay=1e-4, epochs=epochs, max_steps=max_steps)
    train(model, model, loader, recipe, device=device, desc="mean teacher" if mean_teacher else "pairs only",
          progress=progress)
    return model.eval()


def compare(image: torch.Tensor, text: torch.Tensor, unpaired: torch.Tensor, *, weights=(0.1, 0.3, 1.0),
            val_fraction: float = 0.2, **train_kwargs) -> dict:
    """The pairs-alone adapters and the mean teacher, its consistency weight chosen on held-out pairs.

    The first `val_fraction` of the pairs (draw them in random order) is held out; both methods train on
    the rest, and the mean teacher's weight is the one of `weights` with the best mean R@10 (both
    directions) on the held-out pairs, never on the test set. Returns {"pairs alone": model,
    "mean teacher": model, "weight": chosen, "validation": {weight: score}}.
    """
    n_val = max(2, int(val_fraction * len(image)))
    val, train = slice(0, n_val), slice(n_val, None)

    def score(model) -> float:
        r = recalls(image[val], text[val], model)
        return (r["i2t_r10"] + r["t2i_r10"]) / 2

    students = {w: train_retrieval(image[train], text[train], unpaired, mean_teacher=True, consistency=w,
                                   **train_kwargs) for w in weights}
    validation = {w: score(m) for w, m in students.items()}
    best = max(weights, key=validation.get)
    return {"pairs alone": train_retrieval(image[train], text[train], unpaired, mean_teacher=False, **train_kwargs),
            "mean teacher": students[best], "weight": best, "validation": validation}


def clip_embeddings(model, tokenizer, dataset, captions: list[str]):
    """Frozen CLIP embeddings (unit length, CPU) of a split's images and of one caption per image."""
    if len(captions) != len(dataset):
        raise ValueError(f"{len(captions)} captions for {len(dataset)} images: one caption per image is needed.")
    images = torch.cat([batch[0] for batch in torch.utils.data.DataLoader(dataset, batch_size=512)])
    return encode_images(model, as_float_images(images)), encode_texts(model, tokenizer, captions)


@torch.no_grad()
def recalls(image: torch.Tensor, text: torch.Tensor, model: MeanTeacherRetrieval | None = None) -> dict:
    """Recall@1/5/10 (%) of matching test images and captions, both directions; `model=None`: zero-shot."""
    if model is not None:
        device = model.log_scale.device
        image, text = model.image(image.to(device)).cpu(), model.text(text.to(device)).cpu()
    return retrieval_recalls(F.normalize(image, dim=-1), F.normalize(text, dim=-1), ks=(1, 5, 10))
