"""The three scales, defined in one place: this package.

A notebook says `cfg = load_profile(profile, **overrides)` and nothing else
about sizes: `tiny` (tests, seconds), `small` (the CPU default, minutes) and
`paper` (real data and weights, a GPU). The fields every notebook shares are
below; each study adds its own in a sibling module (`study1.py`...) as a
`FIELDS` dict, so the full list of knobs and their values at each scale lives
in this folder. In a study file a value may be a dict with exactly the keys
tiny, small and paper: one value per scale. Every field also says what values
it accepts (a rule from `rules.py`), and a study file's `CHECKS` (functions of
all the values) refuse what one field alone cannot show. Unknown keys, wrong
types and values outside the rules are errors that name the key, raised
before any work starts (the command line checks `-p` before a kernel starts).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import typing

from ..errors import ConfigError
from .rules import DEVICE, FLAG, NAME, NON_NEGATIVE, POSITIVE, SYNTH_SIZE, UNIT, one_of

PROFILE_NAMES = ("tiny", "small", "paper")


def per_profile(tiny, small, paper) -> dict:
    """A value that differs between the scales, in the study files' form."""
    return {"tiny": tiny, "small": small, "paper": paper}


# name -> (type, value or per_profile(...), allowed values). Shared by every notebook.
COMMON_FIELDS: dict[str, tuple] = {
    "profile": (str, per_profile("tiny", "small", "paper"), one_of(*PROFILE_NAMES)),
    # replicates: each seed retrains what a paper's seeds vary (students, trained heads); 3 at small
    "seeds": (list[int], per_profile([0], [0, 1, 2], [0]), NON_NEGATIVE),
    # seeds of the pretrained networks that stand for published weights (backbones, SSL teachers,
    # the small CLIP): one for every replicate (as published weights are), or one per seed to
    # replicate over backbones too; `cfg.backbone_seed(seed)` says which a replicate uses
    "backbone_seeds": (list[int], [0], NON_NEGATIVE),
    "dry_run": (bool, False, FLAG),        # two optimisation steps per phase; random weights allowed
    "device": (str, "auto", DEVICE),       # "auto" = CUDA when present, else CPU
    # data-parallel processes of the long trainings (`parallel.launch`; one GPU each on a multi-GPU node)
    "num_processes": (int, 1, POSITIVE),
    "num_workers": (int, per_profile(0, 0, 8), NON_NEGATIVE),
    # torch threads of the notebook's kernel (0: torch's default, every core). One at tiny/small: the
    # numbers do not depend on a machine's core count, a busy shared machine cannot stall OpenMP's
    # threads, and `make run` runs two notebooks side by side instead (`kdutils run --jobs 2`)
    "threads": (int, per_profile(1, 1, 0), NON_NEGATIVE),
    "progress": (bool, per_profile(False, True, True), FLAG),
    # papermill's time limit per cell, in seconds (a hung cell fails instead of hanging a run)
    "cell_timeout": (int, per_profile(300, 3600, 86400), POSITIVE),
    # SynthWorld sizes (`paper` uses the real data sets instead)
    "image_size": (int, per_profile(32, 32, 224), POSITIVE),
    "context_p": (float, 0.5, UNIT),
    "n_source_train": (int, per_profile(600, 12000, 0), SYNTH_SIZE),
    "n_source_test": (int, per_profile(200, 2000, 0), SYNTH_SIZE),
    "n_target_train": (int, per_profile(300, 5000, 0), SYNTH_SIZE),
    "n_target_val": (int, per_profile(100, 1000, 0), SYNTH_SIZE),
    "n_target_test": (int, per_profile(200, 2000, 0), SYNTH_SIZE),
    # generic training sizes
    "batch_size": (int, per_profile(64, 128, 64), POSITIVE),
    # supervised pretraining of SynthWorld backbones on the source task (cached)
    "pretrain_epochs": (int, per_profile(1, 12, 0), NON_NEGATIVE),
    "student_arch": (str, per_profile("resnet_xs", "resnet_s", "resnet18"), NAME),
    "teacher_arch": (str, per_profile("resnet_xs", "resnet_m", "vit_b_16"), NAME),
    # where the `paper` profile finds downloads
    "data_root": (str, "data", NAME),
    "weights_root": (str, "weights", NAME),
}


def _study_modules() -> list:
    return [importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]


def _study_fields() -> dict[str, tuple]:
    fields: dict[str, tuple] = {}
    for module in _study_modules():
        info = module.__name__.rsplit(".", 1)[-1]
        for name, spec in getattr(module, "FIELDS", {}).items():
            if name in fields or name in COMMON_FIELDS:
                raise ConfigError(f"profile field '{name}' is defined twice (again in {info}.py).")
            if len(spec) != 3:
                raise ConfigError(f"profile field '{name}' in {info}.py needs (type, value, allowed values).")
            fields[name] = spec
    return fields


ALL_FIELDS = {**COMMON_FIELDS, **_study_fields()}
#: Checks across fields (`check(values)` raises ConfigError), from the study files' `CHECKS`.
CROSS_CHECKS = [check for module in _study_modules() for check in getattr(module, "CHECKS", ())]


def _to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _replace(self, **changes):
    return _build(self.to_dict(), changes)


def _backbone_seed(self, seed: int) -> int:
    """The backbone seed of replicate `seed` (see the field `backbone_seeds`)."""
    if len(self.backbone_seeds) == 1:
        return self.backbone_seeds[0]
    return self.backbone_seeds[self.seeds.index(seed)]


def _shared_backbone_seed(self, reason: str) -> int:
    """The one backbone seed of a study that freezes its backbones once for all its replicates (`reason` says how)."""
    if len(set(self.backbone_seeds)) > 1:
        raise ConfigError(f"{reason}; got backbone_seeds={self.backbone_seeds}. Run it once per backbone seed instead "
                          f"(-p backbone_seeds=[1], ...).")
    return self.backbone_seeds[0]


def _max_steps(self) -> int | None:
    """Steps per epoch for the training loop: 2 in dry-run mode, else no cap."""
    return 2 if self.dry_run else None


def _phase_epochs(self, n: int) -> int:
    """Epochs of a training phase: `n`, or 1 in a dry run (whose epochs stop after `max_steps` steps)."""
    return 1 if self.dry_run else n


Config = dataclasses.make_dataclass(
    "Config", [(name, spec[0]) for name, spec in ALL_FIELDS.items()], frozen=True,
    namespace={"to_dict": _to_dict, "replace": _replace, "max_steps": property(_max_steps),
               "backbone_seed": _backbone_seed, "shared_backbone_seed": _shared_backbone_seed,
               "phase_epochs": _phase_epochs,
               "__doc__": "Every size and path a notebook may need; build it with load_profile()."},
)
_HINTS = {name: spec[0] for name, spec in ALL_FIELDS.items()}


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
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"parameter '{key}' must be a finite number, got {value!r}.")
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(
            f"parameter '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}.")
    return value


def _validate(values: dict) -> None:
    """Every value against its field's allowed values (each item of a list)."""
    profile = values["profile"]
    for key, (_, _, allowed) in ALL_FIELDS.items():
        value = values[key]
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if not allowed.check(item, profile):
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"parameter '{where}' must be {allowed.text}, got {item!r}"
                                  + (f" (in {value!r})." if i is not None else "."))
    for check in CROSS_CHECKS:
        check(values)


def _build(base: dict, overrides: dict):
    values = dict(base)
    for key, value in overrides.items():
        if key not in _HINTS:
            raise ConfigError(f"unknown parameter '{key}'. Known: {sorted(_HINTS)}.")
        if value is None:  # papermill passes None for "use the profile's value"
            continue
        values[key] = _check_type(key, value, _HINTS[key])
    _validate(values)
    if len(set(values["seeds"])) != len(values["seeds"]):
        raise ConfigError(f"parameter 'seeds' must not repeat a seed (each is a replicate), got {values['seeds']!r}.")
    if len(values["backbone_seeds"]) not in (1, len(values["seeds"])):
        raise ConfigError(f"parameter 'backbone_seeds' must hold one seed (shared by every replicate) or one "
                          f"per seed ({len(values['seeds'])} for seeds {values['seeds']}), "
                          f"got {values['backbone_seeds']!r}.")
    if values["profile"] == "paper" and values["backbone_seeds"] != [0]:
        raise ConfigError(f"parameter 'backbone_seeds' must be [0] at the paper profile, got "
                          f"{values['backbone_seeds']!r}: its backbones are the published weights, "
                          "which have no seeds.")
    return Config(**values)


def profile_values(profile: str) -> dict:
    """The raw values of `profile` before overrides."""
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of {PROFILE_NAMES}.")
    out = {}
    for name, (_, value, _) in ALL_FIELDS.items():
        if isinstance(value, dict) and set(value) == set(PROFILE_NAMES):  # `per_profile`
            value = value[profile]
        out[name] = list(value) if isinstance(value, list) else value
    return out


def load_profile(profile: str, **overrides):
    """The configuration of `profile`, with `overrides` applied and checked.

    An override of `None` keeps the profile's value, so a notebook can pass
    its parameters straight through (`seeds=None` means the profile's seeds).
    """
    return _build(profile_values(profile), overrides)
