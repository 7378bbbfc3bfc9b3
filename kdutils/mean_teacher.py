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

import torch
import torch.nn.functional as F
from torch import nn

from .clip import encode_images, encode_texts, retrieval_recalls
from .train import fit, make_optimizer, seed_everything

__all__ = ["Adapter", "MeanTeacherRetrieval", "clip_embeddings", "train_retrieval", "recalls"]


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
    (learnable temperature, as CLIP) plus `consistency` x KL(teacher || student) of the unpaired images'
    softmax over the caption `bank` at `temperature`. The teacher follows the student by EMA (`decay`),
    updated before each step, and never gets a gradient.
    """

    def __init__(self, dim: int, bank: torch.Tensor, *, consistency: float = 1.0, decay: float = 0.99,
                 noise: float = 0.05, temperature: float = 0.05):
        super().__init__()
        self.image, self.text = Adapter(dim), Adapter(dim)
        self.teacher = copy.deepcopy(nn.ModuleDict({"image": self.image, "text": self.text})).requires_grad_(False)
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10, as the retrieval projections elsewhere
        self.register_buffer("bank", bank)
        self.consistency, self.decay, self.noise, self.temperature = consistency, decay, noise, temperature

    @torch.no_grad()
    def update_teacher(self) -> None:
        for t, s in zip(self.teacher.parameters(), [*self.image.parameters(), *self.text.parameters()]):
            t.lerp_(s, 1 - self.decay)

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
        return {"loss": contrastive + self.consistency * consistency, "contrastive": contrastive,
                "consistency": consistency}


class _PairsWithUnpaired(torch.utils.data.Dataset):
    """Item i: pair i, and an unpaired image drawn by the loader's seeded order (cycled)."""

    def __init__(self, image, text, unpaired, per_pair: int):
        self.image, self.text, self.unpaired, self.per_pair = image, text, unpaired, per_pair

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i):
        n = len(self.unpaired)
        idx = [(i * self.per_pair + k) % n for k in range(self.per_pair)] if n else []
        return self.image[i], self.text[i], self.unpaired[idx] if n else self.unpaired[:0]


def train_retrieval(image: torch.Tensor, text: torch.Tensor, unpaired: torch.Tensor, *, mean_teacher: bool,
                    epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-3, unpaired_per_pair: int = 4,
                    device="cpu", max_steps: int | None = None, progress: bool = False) -> MeanTeacherRetrieval:
    """Adapters on frozen CLIP embeddings of the pairs (`image`, `text`); with `mean_teacher`, `unpaired` too."""
    gen = seed_everything(seed)
    model = MeanTeacherRetrieval(image.shape[1], text, consistency=1.0 if mean_teacher else 0.0)
    data = _PairsWithUnpaired(image, text, unpaired if mean_teacher else unpaired[:0], unpaired_per_pair)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(data) > batch_size,
        collate_fn=lambda items: {"image": torch.stack([a for a, _, _ in items]),
                                  "text": torch.stack([b for _, b, _ in items]),
                                  "unpaired": torch.cat([c for _, _, c in items])})
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], "adamw", lr=lr,
                               weight_decay=1e-4)
    fit(model, loader, model, optimizer, epochs, device=device, max_steps_per_epoch=max_steps,
        desc="mean teacher" if mean_teacher else "pairs only", progress=progress)
    return model.eval()


def clip_embeddings(model, tokenizer, dataset, captions: list[str], batch_size: int = 512):
    """Frozen CLIP embeddings (unit length, CPU) of a split's images and of one caption per image."""
    if len(captions) != len(dataset):
        raise ValueError(f"{len(captions)} captions for {len(dataset)} images: one caption per image is needed.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    images = torch.cat([batch[0] for batch in loader])
    return encode_images(model, images, batch_size), encode_texts(model, tokenizer, captions, batch_size)


@torch.no_grad()
def recalls(image: torch.Tensor, text: torch.Tensor, model: MeanTeacherRetrieval | None = None) -> dict:
    """Recall@1/5/10 (%) of matching test images and captions, both directions; `model=None`: zero-shot."""
    if model is not None:
        device = model.log_scale.device
        image, text = model.image(image.to(device)).cpu(), model.text(text.to(device)).cpu()
    return retrieval_recalls(F.normalize(image, dim=-1), F.normalize(text, dim=-1), ks=(1, 5, 10))
