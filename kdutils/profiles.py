"""The three scales, defined in one place.

A notebook says `cfg = load_profile(profile, **overrides)` and nothing else
about sizes: `tiny` (tests, seconds), `small` (the CPU default, minutes) and
`paper` (real data and weights, a GPU). Unknown keys and wrong types are
errors that name the key, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from .errors import ConfigError

PROFILE_NAMES = ("tiny", "small", "paper")


@dataclass(frozen=True)
class Config:
    """Every size and path a notebook may need. Defaults are the `small` values."""

    profile: str = "small"
    seeds: list[int] = field(default_factory=lambda: [0])
    dry_run: bool = False          # two optimisation steps per phase; random weights allowed
    device: str = "auto"           # "auto" = CUDA when present, else CPU
    num_workers: int = 0
    progress: bool = True
    # SynthWorld
    image_size: int = 32
    context_p: float = 0.5
    n_source_train: int = 12000
    n_source_test: int = 2000
    n_target_train: int = 5000
    n_target_val: int = 1000
    n_target_test: int = 2000
    # generic training sizes
    batch_size: int = 128
    epochs: int = 10
    # where the `paper` profile finds downloads
    data_root: str = "data"
    weights_root: str = "weights"
    cache_dir: str = ""            # "" = $KD_CACHE_DIR or <repo>/.cache

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return _build(self.to_dict(), changes)

    @property
    def max_steps(self) -> int | None:
        """Steps per epoch cap for the training loop: 2 in dry-run mode, else no cap."""
        return 2 if self.dry_run else None


PROFILES: dict[str, dict] = {
    "tiny": dict(
        n_source_train=600, n_source_test=200, n_target_train=300, n_target_val=100,
        n_target_test=200, batch_size=64, epochs=2, progress=False,
    ),
    "small": dict(),
    "paper": dict(
        image_size=224, batch_size=64, epochs=200, num_workers=8,
        n_source_train=0, n_source_test=0, n_target_train=0, n_target_val=0, n_target_test=0,
    ),
}

_HINTS = typing.get_type_hints(Config)


def _check_type(key: str, value, hint):
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"parameter '{key}' must be a non-empty list of {item.__name__}, got {value!r}.")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(
            f"parameter '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}.")
    return value


def _validate(values: dict) -> None:
    if values["profile"] not in PROFILE_NAMES:
        raise ConfigError(f"parameter 'profile' must be one of {PROFILE_NAMES}, got {values['profile']!r}.")
    for key in ("n_source_train", "n_source_test", "n_target_train", "n_target_val", "n_target_test",
                "num_workers"):
        if values[key] < 0:
            raise ConfigError(f"parameter '{key}' must be >= 0, got {values[key]}.")
    for key in ("batch_size", "epochs", "image_size"):
        if values[key] <= 0:
            raise ConfigError(f"parameter '{key}' must be > 0, got {values[key]}.")
    if not 0.0 <= values["context_p"] <= 1.0:
        raise ConfigError(f"parameter 'context_p' must be in [0, 1], got {values['context_p']}.")
    if any(s < 0 for s in values["seeds"]):
        raise ConfigError(f"parameter 'seeds' must hold non-negative integers, got {values['seeds']}.")


def _build(base: dict, overrides: dict) -> Config:
    values = dict(base)
    for key, value in overrides.items():
        if key not in _HINTS:
            close = [k for k in _HINTS if k.split("_")[0] == key.split("_")[0]]
            hint = f" Did you mean {close}?" if close else ""
            raise ConfigError(f"unknown parameter '{key}'.{hint} Known: {sorted(_HINTS)}.")
        if value is None:  # papermill passes None for "use the profile's value"
            continue
        values[key] = _check_type(key, value, _HINTS[key])
    _validate(values)
    return Config(**values)


def load_profile(profile: str, **overrides) -> Config:
    """The configuration of `profile`, with `overrides` applied and checked.

    An override of `None` keeps the profile's value, so a notebook can pass
    its parameters straight through (`seeds=None` means the profile's seeds).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of {PROFILE_NAMES}.")
    base = Config(profile=profile).to_dict()
    base.update(PROFILES[profile])
    return _build(base, overrides)
