"""Study 4 (notebook 04_tl_kd_shap): transfer learning + KD, SHAP, Wilcoxon tests.

`paper` values are the thesis's (STUDIES.md section 5); `small` keeps the
same recipe with grids sized for 2 CPU cores; `tiny` only proves the code
path. A dict with the keys tiny/small/paper gives one value per scale.
"""

from .rules import BELOW_ONE, FLAG, FRACTION, NAME, NON_NEGATIVE, OPEN_UNIT, PATH_OR_EMPTY, POSITIVE, UNIT

_ALL = ("tiny", "small", "paper")


def _scales(tiny, small, paper) -> dict:
    return dict(zip(_ALL, (tiny, small, paper)))


FIELDS = {
    # H1-H3 training seeds; the notebook's `seeds` parameter replaces them when given
    "s4_h1_seeds": (list[int], _scales([0], [0, 7, 42], [0, 7, 42]), NON_NEGATIVE),
    # head-only transfer learning, as in the thesis (teacher heads train the same way)
    "s4_lr": (float, 0.01, POSITIVE),
    "s4_momentum": (float, 0.9, BELOW_ONE),
    "s4_weight_decay": (float, 5e-4, NON_NEGATIVE),
    "s4_batch_size": (int, 64, POSITIVE),
    "s4_epochs": (int, _scales(4, 60, 200), POSITIVE),         # upper bound: early stopping ends runs sooner
    "s4_patience": (int, 10, POSITIVE),                         # early stopping on validation accuracy
    "s4_plateau_factor": (float, 0.9, OPEN_UNIT),                # "reduced by 10%" after...
    "s4_plateau_patience": (int, 3, NON_NEGATIVE),                  # ...3 epochs without improvement
    "s4_dropout": (float, 0.2, BELOW_ONE),
    "s4_temperature": (float, 10.0, POSITIVE),
    "s4_alpha": (float, 0.1, UNIT),                         # weight of the distillation term
    "s4_alpha_sweep": (list[float], [0.0, 0.1, 0.5, 1.0], UNIT),
    # `paper` models: torchvision weight enums and input sizes (0 = the images' own 32x32)
    "s4_student_weights": (str, "IMAGENET1K_V1", NAME),
    "s4_teacher_weights": (str, "IMAGENET1K_SWAG_E2E_V1", NAME),
    "s4_student_input_size": (int, _scales(0, 0, 224), NON_NEGATIVE),
    "s4_teacher_input_size": (int, _scales(0, 0, 384), NON_NEGATIVE),
    "s4_val_fraction": (float, 0.1, OPEN_UNIT),  # `paper`: share of CIFAR-10 train held out for validation
    "s4_verify_data": (bool, True, FLAG),                   # check the official CIFAR-10 MD5s
    # H3: thresholds as fractions of the best mean TL validation accuracy (relative) or in %
    "s4_h3_relative": (bool, _scales(True, True, False), FLAG),
    "s4_h3_thresholds": (list[float], _scales([0.9, 0.95], [0.95, 0.98, 1.0], [85.0, 90.0]), POSITIVE),
    # SHAP (DeepExplainer on the student; GradientExplainer as the cross-check)
    "s4_shap_background": (int, _scales(8, 100, 100), POSITIVE),     # the first N training images
    "s4_shap_per_class": (int, _scales(1, 10, 2), POSITIVE),         # explained test images per class
    "s4_shap_crosscheck": (int, _scales(4, 20, 20), POSITIVE),       # images explained by both methods
    "s4_shap_crosscheck_samples": (int, _scales(16, 100, 200), POSITIVE),
    "s4_shap_rule_demo": (int, _scales(2, 5, 5), POSITIVE),          # images explained with shap's own max-pool rule
    "s4_mask_annotations": (str, "", PATH_OR_EMPTY),                      # `paper`: COCO polygon JSON (VIA export)
    # H4: harder training conditions (WideResNet-50-2 teacher at `paper`)
    "s4_h4_seeds": (list[int], _scales([1], [1, 7, 42], [1, 7, 42]), NON_NEGATIVE),
    "s4_h4_lr": (float, 0.1, POSITIVE),
    "s4_h4_epochs": (int, _scales(3, 20, 200), POSITIVE),            # no early stopping in H4
    "s4_h4_teacher_arch": (str, _scales("resnet_xs", "resnet_m", "wide_resnet50_2"), NAME),
    "s4_h4_teacher_weights": (str, "IMAGENET1K_V1", NAME),
    "s4_h4_input_size": (int, _scales(0, 0, 32), NON_NEGATIVE),          # fraction and label-noise sweeps
    "s4_h4_corrupt_input_size": (int, _scales(0, 0, 224), NON_NEGATIVE),  # CenterBlack / QuarterBlack sweeps
    "s4_h4_fractions": (list[float], _scales([0.5, 1.0], [0.1, 0.3, 1.0],
                                             [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]), FRACTION),
    "s4_h4_noise_subset": (float, 0.15, FRACTION),
    "s4_h4_noise_levels": (list[float], _scales([0.0, 0.4], [0.0, 0.3, 0.6],
                                                [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), BELOW_ONE),
    "s4_h4_corrupt_subset": (float, 0.1, FRACTION),
    "s4_h4_corrupt_p": (list[float], _scales([0.5], [0.1, 0.5, 0.95],
                                             [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]), UNIT),
    "s4_h4_views": (int, _scales(1, 1, 4), POSITIVE),                # pre-drawn corruptions per image (x2 mirrors)
    "s4_h4_center_min_side": (float, 200 / 224, FRACTION),           # CenterBlack side ~ U(min_side, 1) x image side
}
