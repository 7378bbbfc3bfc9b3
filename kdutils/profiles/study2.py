"""Study 2 (binary image-text matching with KD): its knobs at each scale.

`paper` values are the course paper's hyperparameters: Adam everywhere;
teacher lr 5e-5 for 5 epochs, student lr 1e-4 for 10 epochs, distillation lr
1e-5; T 1.5-3.0 and alpha 0.4-0.6 (best: T = 3, alpha = 0.5). Where `small`
departs from them it is for the CPU budget or because a student trained from
scratch needs it (a larger learning rate for distillation, fewer epochs,
a T sweep at alpha = 0.5 on one student), and the notebook says so. `paper` caps COCO at
40,000 captioned images (32,000 training pairs) and sweeps a 3 x 3 grid on both
students (36 runs of 10 epochs) so that it fits in hours on one GPU; set
`s2_coco_max_images=0` for every image of captions_train2017.json.
The small CLIP (`s2_clip_*`) is also the image-text model of study 1.
"""

from .rules import FLAG, NAME, NON_NEGATIVE, POSITIVE, UNIT, one_of

FIELDS = {
    # small CLIP pretrained contrastively on SynthWorld source images + captions (tiny/small; shared with study 1)
    "s2_clip_arch": (str, {"tiny": "clip_xs", "small": "clip_s", "paper": "clip_s"}, NAME),
    "s2_clip_epochs": (int, {"tiny": 1, "small": 8, "paper": 0}, NON_NEGATIVE),
    "s2_clip_lr": (float, 1e-3, POSITIVE),
    "s2_clip_hard_negatives": (bool, True, FLAG),    # NegCLIP-style attribute-changed captions as extra negatives
    "s2_clip_prompt_p": (float, 0.25, UNIT),         # share of images captioned by their class prompt instead
    # pairs (paper: MS-COCO captions; paths under data_root)
    "s2_coco_annotations": (str, "coco/annotations/captions_train2017.json", NAME),
    "s2_coco_images": (str, "coco/train2017", NAME),
    "s2_coco_max_images": (int, {"tiny": 0, "small": 0, "paper": 40000}, NON_NEGATIVE),  # 0 = every captioned image
    # teacher: CLIP + w * cos + b, fine-tuned with BCE
    "s2_clip_weights": (str, "openai/clip-vit-base-patch32", NAME),   # folder under weights_root (paper)
    "s2_teacher_epochs": (int, {"tiny": 1, "small": 3, "paper": 5}, POSITIVE),
    "s2_teacher_lr": (float, 5e-5, POSITIVE),
    # students: ResNet features ++ mean-pooled text encoder -> head, fine-tuned with BCE
    "s2_text_weights": (str, "sentence-transformers/all-MiniLM-L6-v2", NAME),  # folder under weights_root (paper)
    "s2_student_weights": (str, "IMAGENET1K_V1", NAME),  # torchvision weights of student_arch (paper)
    "s2_text_hidden": (int, {"tiny": 32, "small": 64, "paper": 384}, POSITIVE),   # small BERT (tiny/small only)
    "s2_text_layers": (int, {"tiny": 1, "small": 2, "paper": 6}, POSITIVE),
    "s2_head_width": (int, {"tiny": 32, "small": 128, "paper": 256}, POSITIVE),  # interaction head
    "s2_student_epochs": (int, {"tiny": 1, "small": 4, "paper": 10}, POSITIVE),
    "s2_student_lr": (float, {"tiny": 1e-3, "small": 1e-3, "paper": 1e-4}, POSITIVE),
    # distillation
    "s2_kd_lr": (float, {"tiny": 1e-3, "small": 1e-3, "paper": 1e-5}, POSITIVE),
    "s2_best_T": (float, 3.0, POSITIVE),  # the paper's best sigmoid-KD cell, used for the additive student
    "s2_best_alpha": (float, 0.5, UNIT),
    # every grid holds the paper's best cell (T = 3, alpha = 0.5) and a lower and a higher T beside it
    "s2_sweep_T": (list[float], [1.5, 3.0, 5.0], POSITIVE),
    # softmax KD's temperatures: the paper's T = 3 alone at tiny/small (its claims need only that cell:
    # softmax against sigmoid KD; the T claim is sigmoid KD's), the full sweep at paper
    "s2_softmax_sweep_T": (list[float], {"tiny": [3.0], "small": [3.0], "paper": [1.5, 3.0, 5.0]}, POSITIVE),
    "s2_sweep_alpha": (list[float], {"tiny": [0.5], "small": [0.5], "paper": [0.4, 0.5, 0.6]}, UNIT),
    "s2_sweep_heads": (list[str], {"tiny": ["interaction"], "small": ["interaction"],
                                   "paper": ["additive", "interaction"]}, one_of("additive", "interaction")),
}
