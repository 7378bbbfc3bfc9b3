"""Study 3 (KASSL, notebook 03): knobs at each scale.

`paper` values are the presentation's (SGD momentum 0.9, lr 0.03, batch 64,
200 epochs with 5 warm-up for KASSL; the BYOL baseline trains 200 epochs
with the same SGD settings, SGD standing in for BYOL's LARS) or, where it is
silent, the published defaults of the method (BYOL: EMA 0.996, projector
4096 -> 256; MoCo-v2: queue 65536, EMA 0.999, temperature 0.2). The weight
decay (1e-4) and the feature-reduction size (a quarter of the teacher's) are
this lab's choices. `small` values are sized for two CPU cores: SSL there
(batch 64, queue 1024, EMA 0.99, lr 0.1) was tuned for short runs.
"""

from ..errors import ConfigError
from .rules import FLAG, NAME, NON_NEGATIVE, POSITIVE, UNIT, one_of

_ALL_VARIANTS = ["original", "no_aug", "feature_reduction", "no_aug_fr"]

FIELDS = {
    # the grid: the teachers, the KASSL variants run with the first teacher
    # (s3_variants) and with the others (s3_variants_other_teachers)
    "s3_teachers": (list[str], {"tiny": ["supervised", "byol", "moco_v2"],
                                "small": ["supervised", "byol", "moco_v2"],
                                "paper": ["byol", "moco_v2"]}, one_of("supervised", "byol", "moco_v2")),
    "s3_variants": (list[str], _ALL_VARIANTS, one_of(*_ALL_VARIANTS)),
    # (at small the other teachers also run the cheap no-augmentation variant: one student pass per image)
    "s3_variants_other_teachers": (list[str], {"tiny": ["original"], "small": ["original", "no_aug"],
                                      "paper": _ALL_VARIANTS}, one_of(*_ALL_VARIANTS)),
    # views: "synthworld" matches the world's invariances, "imagenet" is BYOL's recipe
    "s3_view_preset": (str, {"tiny": "synthworld", "small": "synthworld", "paper": "imagenet"},
                       one_of("synthworld", "imagenet")),
    # pre-drawn views per image whose teacher features are cached (0: fresh views, live teacher)
    "s3_view_bank": (int, {"tiny": 2, "small": 4, "paper": 0}, NON_NEGATIVE),
    # SSL teachers pretrained on SynthWorld source images (tiny/small). At `small` they are loaded
    # from published/, trained once with `python -m kdutils publish ssl-byol-resnet_m
    # ssl-moco_v2-resnet_m` (kdutils.published), as `paper` loads published checkpoints: 8 epochs
    # each (probe 40.2% BYOL, 46.4% MoCo-v2, random weights 29.0%; 2-3 in-run epochs gave 32.3%
    # BYOL); other values train in-run, cached
    "s3_byol_epochs": (int, {"tiny": 1, "small": 8, "paper": 0}, NON_NEGATIVE),
    "s3_moco_epochs": (int, {"tiny": 1, "small": 8, "paper": 0}, NON_NEGATIVE),
    # (at paper only the BYOL baseline trains with these: the presentation's SGD settings)
    "s3_ssl_lr": (float, {"tiny": 0.1, "small": 0.1, "paper": 0.03}, POSITIVE),
    "s3_ssl_batch": (int, 64, POSITIVE),
    "s3_ssl_hidden": (int, {"tiny": 64, "small": 1024, "paper": 4096}, POSITIVE),
    "s3_ssl_proj_dim": (int, {"tiny": 32, "small": 128, "paper": 256}, POSITIVE),
    "s3_byol_momentum": (float, {"tiny": 0.99, "small": 0.99, "paper": 0.996}, UNIT),
    "s3_moco_momentum": (float, {"tiny": 0.99, "small": 0.99, "paper": 0.999}, UNIT),
    "s3_moco_queue": (int, {"tiny": 256, "small": 1024, "paper": 65536}, POSITIVE),
    "s3_moco_temperature": (float, 0.2, POSITIVE),
    "s3_moco_bn_splits": (int, {"tiny": 2, "small": 2, "paper": 1}, POSITIVE),
    # the baseline: the student architecture trained with BYOL on the target data
    "s3_baseline_epochs": (int, {"tiny": 1, "small": 3, "paper": 200}, POSITIVE),
    # KASSL student (the same epochs as the baseline at every scale, as in the presentation)
    "s3_kassl_epochs": (int, {"tiny": 1, "small": 3, "paper": 200}, POSITIVE),
    "s3_kassl_warmup_epochs": (int, {"tiny": 0, "small": 1, "paper": 5}, NON_NEGATIVE),
    "s3_kassl_lr": (float, 0.03, POSITIVE),
    "s3_kassl_batch": (int, 64, POSITIVE),
    "s3_kassl_weight_decay": (float, 1e-4, NON_NEGATIVE),
    "s3_extension_hidden": (int, {"tiny": 64, "small": 512, "paper": 2048}, POSITIVE),
    "s3_reduced_dim": (int, {"tiny": 16, "small": 64, "paper": 512}, POSITIVE),
    "s3_fr_trainable": (bool, True, FLAG),
    # "none": the presentation's raw cosine; "standardize": teacher features
    # centred and scaled per dimension first (see kdutils.kassl.KASSLStudent)
    "s3_target_norm": (str, {"tiny": "standardize", "small": "standardize", "paper": "none"},
                       one_of("none", "standardize")),
    # rerun two cheap (no augmentation) variants of the first teacher with the
    # other target normalisation and the other kind of projection
    "s3_controls": (bool, {"tiny": True, "small": True, "paper": False}, FLAG),
    # evaluation
    "s3_probe_epochs": (int, {"tiny": 5, "small": 30, "paper": 100}, POSITIVE),
    # `paper` files (relative paths are under weights_root / data_root)
    "s3_checkpoint_arch": (str, "resnet50", NAME),
    "s3_byol_checkpoint": (str, "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth", NAME),
    "s3_moco_checkpoint": (str, "moco_v2_800ep_pretrain.pth.tar", NAME),
    "s3_supervised_weights": (str, "IMAGENET1K_V1", NAME),
    # published checkpoints load with torch's safe unpickler; True also allows pickled Python
    # objects (Lightning hyper-parameters): only for files from a source you trust
    "s3_trust_pickled_checkpoints": (bool, False, FLAG),
    "s3_imagenet100": (str, "imagenet100", NAME),
}

#: The epochs field of each teacher pretrained self-supervised in-run (tiny/small).
SSL_EPOCH_FIELDS = {"byol": "s3_byol_epochs", "moco_v2": "s3_moco_epochs"}


def _check(v: dict) -> None:
    if len(set(v["s3_teachers"])) != len(v["s3_teachers"]):
        raise ConfigError(f"s3_teachers must be distinct, got {v['s3_teachers']}.")
    if v["s3_view_bank"] % 2:
        raise ConfigError(f"s3_view_bank must be 0 (fresh views) or an even number >= 2, got {v['s3_view_bank']}.")
    if v["profile"] == "paper" and v["s3_view_bank"]:
        raise ConfigError("s3_view_bank > 0 keeps every view in memory: only for SynthWorld; use 0 at paper.")
    if v["s3_ssl_batch"] % v["s3_moco_bn_splits"]:
        raise ConfigError(f"s3_ssl_batch ({v['s3_ssl_batch']}) must be a multiple of s3_moco_bn_splits "
                          f"({v['s3_moco_bn_splits']}).")
    for teacher, field in SSL_EPOCH_FIELDS.items():
        if teacher in v["s3_teachers"] and v["profile"] != "paper" and v[field] < 1:
            raise ConfigError(f"{field} must be >= 1 to pretrain the {teacher} teacher in-run.")


CHECKS = [_check]
