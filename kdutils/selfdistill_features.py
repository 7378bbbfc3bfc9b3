"""Study 1's frozen image features: an encoder's (tokens, pooled) for every item and view of a split.

The image encoders never train, so their outputs are computed once per split
and view (a `frozen.FixedViews`: the training images and their mirrors, the
others as they are) and every head trains on tensors.
"""

from __future__ import annotations

import torch

from .augment import as_float_images
from .cache import cached
from .errors import ConfigError
from .frozen import FixedViews, ViewTargets, outputs
from .selfdistill_data import in_order, indices_of
from .selfdistill_encoders import ImageEncoder

__all__ = ["FrozenFeatures", "features_of"]


class FrozenFeatures:
    """A frozen encoder's (tokens, pooled) for every item and view (`views`, over the whole split) of one split.

    Cached in memory and on disk (tokens in float16) when they fit in
    `cache_mb` (the profile's `s1_feature_cache_mb`); otherwise (ViT-B/16 on
    ImageNet) computed per batch by the encoder, which is the same computation
    without the storage. The one-off pass reads batches of at least 256 images.
    """

    def __init__(self, encoder: ImageEncoder, dataset, data_key: dict, split: str, views: FixedViews, device, *,
                 cache_mb: float, batch_size: int = 256, num_workers: int = 0, progress: bool = False):
        if views.n != len(dataset):
            raise ConfigError(f"the views of {split} cover {views.n} images, the split has {len(dataset)}: build them "
                              f"with FixedViews.mirrored(len(split)) or FixedViews.plain(len(split)).")
        self.encoder, self.views, self.device = encoder, views, torch.device(device)
        first = as_float_images(dataset[0][0].unsqueeze(0)).to(self.device)
        tokens, pooled = encoder(first)
        self.num_tokens, self.token_dim, self.pooled_dim = tokens.shape[1], tokens.shape[2], pooled.shape[1]
        mb = len(dataset) * views.n_views * (self.num_tokens * self.token_dim * 2 + self.pooled_dim * 4) / 2**20
        self.in_memory = mb <= cache_mb
        self.key = {"encoder": encoder.fingerprint, "data": data_key, "split": split, "views": views.key,
                    "in_memory": self.in_memory}  # stored tokens are float16: teachers trained on them differ slightly
        if self.in_memory:
            stored = cached("s1-features", self.key, lambda: self._extract(
                dataset, max(batch_size, 256), num_workers, split, progress), verbose=False)
            self.targets = ViewTargets(table=(stored["tokens"], stored["pooled"]))
        else:
            self.targets = ViewTargets(network=encoder)

    tokens = property(lambda self: self.targets.table[0], doc="(views, N, T, D) float16 tokens, when in memory")
    pooled = property(lambda self: self.targets.table[1], doc="(views, N, P) pooled outputs, when in memory")

    def _extract(self, dataset, batch_size: int, num_workers: int, split: str, progress: bool) -> dict:
        """Every item's tokens (float16) and pooled output in every view, one `frozen.outputs` pass per view."""
        size = self.num_tokens * self.token_dim
        toks, pools = [], []
        for v in range(self.views.n_views):
            def flat_outputs(batch, v=v):
                x = self.views.render(as_float_images(batch[0].to(self.device)), batch[2], torch.full_like(batch[2], v))
                return torch.cat([t.flatten(1) for t in self.encoder(x)], dim=1)

            flat = outputs(self.encoder, in_order(dataset, batch_size, num_workers), flat_outputs, progress=progress,
                           desc=f"{self.encoder.name} {split} [view {v + 1} of {self.views.n_views}]")
            toks.append(flat[:, :size].reshape(-1, self.num_tokens, self.token_dim).half())
            pools.append(flat[:, size:])
        return {"tokens": torch.stack(toks), "pooled": torch.stack(pools)}

    def __call__(self, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor):
        """(tokens, pooled) as float32 on the device for items in the given views (`images` unused when cached)."""
        x = None if self.in_memory else self.views.render(as_float_images(images.to(self.device)), index, view)
        tokens, pooled = self.targets(index.cpu(), view.cpu(), x, device=self.device)
        return tokens.float(), pooled


def features_of(feats: FrozenFeatures, dataset, view: int = 0):
    """Pooled features (N, P) of the items of `dataset` (a split or a subset) in one view, on the CPU."""
    if feats.in_memory:
        return feats.pooled[view, indices_of(dataset)]
    return outputs(feats.encoder, in_order(dataset),
                   lambda b: feats(b[0], b[2], torch.full_like(b[2], view))[1])
