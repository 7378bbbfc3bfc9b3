"""`python -m kdutils bench kassl`: study 3: cached teacher view bank vs the live teacher."""

from __future__ import annotations

import torch

from kdutils.kassl import KASSLStudent, train_kassl
from kdutils.kassl_data import input_side, load_data
from kdutils.kassl_encoders import feature_dim_of
from kdutils.kassl_views import AugmentedViewBank, BankViews
from kdutils.augment import view_pair
from kdutils.teacher import FrozenTeacher
from kdutils.recipes import Recipe
from kdutils.train import seed_everything


def run(n_images: int = 1024, views: int = 4, epochs: int = 4, students: int = 2, rounds: int = 2) -> dict:
    """Print and return the speed-up of cached teacher views over a live teacher, and check they agree.

    The notebook's use at `small`: `students` students of one teacher train for a few epochs on the
    same view bank, once with the bank's teacher features computed in advance (timed on a cold
    cache) and once with the teacher run at every step.
    """
    import time

    from kdutils.models import small_resnet
    from kdutils.profiles import load_profile

    cfg = load_profile("small", n_target_train=n_images, progress=False)
    data = load_data(cfg)
    torch.manual_seed(0)
    teacher = FrozenTeacher(small_resnet(cfg.teacher_arch), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    bank = AugmentedViewBank.draw(data.splits["train"].images, view_pair(cfg.s3_view_preset), views, 0,
                                  data.key["train"])
    teacher_dim = feature_dim_of(teacher, input_side(data))

    def train_once(source, n_epochs=epochs):
        seed_everything(0)
        backbone = small_resnet(cfg.student_arch)
        student = KASSLStudent(backbone, backbone.feature_dim, teacher_dim, cfg.s3_extension_hidden)
        gen = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(len(bank))),
                                             batch_size=cfg.s3_kassl_batch, shuffle=True, drop_last=True,
                                             generator=gen)
        recipe = Recipe(lr=cfg.s3_kassl_lr, weight_decay=1e-4, schedule="warmup_cosine", epochs=n_epochs)
        return train_kassl(student, loader, source, recipe, progress=False)

    def timed(source):
        t0 = time.perf_counter()
        losses = [train_once(source).series("train_loss") for _ in range(students)]
        return time.perf_counter() - t0, losses

    features, once_s = _cold_features(bank, teacher)
    train_once(BankViews(bank, features=features), n_epochs=1)  # untimed warm-up: the first run pays one-off costs
    fixed = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))  # targets that cost no teacher
    sources = {"alone": BankViews(bank, features=fixed),
               "cached": BankViews(bank, features=features), "live": BankViews(bank, teacher=teacher)}
    best, losses = {name: float("inf") for name in sources}, {}
    for _ in range(rounds):  # interleaved, the fastest of each: a busy machine slows single runs, not the minimum
        for name, source in sources.items():
            seconds, losses[name] = timed(source)
            best[name] = min(best[name], seconds)
    alone_s, cached_s, live_s = best["alone"], best["cached"], best["live"]
    cached_loss, live_loss = losses["cached"], losses["live"]
    same = all(abs(a - b) < 1e-5 for la, lb in zip(cached_loss, live_loss) for a, b in zip(la, lb))
    removed = (live_s - cached_s) / (live_s - alone_s) if live_s > alone_s else float("nan")  # nan: lost in noise
    result = {"student_alone_s": alone_s, "live_s": live_s, "cached_s": cached_s, "caching_once_s": once_s,
              "teacher_share_removed": removed, "speedup": live_s / cached_s, "same_losses": same}
    print(f"study 3, KASSL: {students} students x {epochs} epochs on {n_images} images with {views} pre-drawn views "
          f"(fastest of {rounds} interleaved rounds): "
          f"student with fixed targets {alone_s:.1f} s; live teacher {live_s:.1f} s; cached teacher features "
          f"{cached_s:.1f} s (+ {once_s:.1f} s once to compute them)")
    print(f"  the cache removes {100 * removed:.0f}% of the teacher's share of a step; speed-up "
          f"{live_s / cached_s:.2f}x; per-epoch losses equal: {same}")
    return result


def _cold_features(bank: AugmentedViewBank, teacher: FrozenTeacher) -> tuple[torch.Tensor, float]:
    """The bank's teacher features computed into an empty cache, and the seconds that took."""
    import os
    import tempfile
    import time

    old = os.environ.get("KD_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KD_CACHE_DIR"] = tmp
        try:
            t0 = time.perf_counter()
            return bank.features(teacher, "cpu"), time.perf_counter() - t0
        finally:
            if old is None:
                del os.environ["KD_CACHE_DIR"]
            else:
                os.environ["KD_CACHE_DIR"] = old
