"""Study 1 (self-distillation through a text-queried image-text head): its knobs at each scale.

The thesis defines the method and the grid (image encoders ViT-B/32, ViT-B/16
and ResNet-50 x text encoders CLIP text and RoBERTa x without/with text x
CIFAR-10, CIFAR-100 and ImageNet) but gives no training hyperparameters, so
the `paper` values below are this lab's choices (AdamW for head and
students, a warm-up + cosine schedule), recorded in every results file.
`small` runs the same grid on SynthWorld with the source-pretrained
SmallResNet and the small CLIP of study 2 (`s2_clip_*`), with fewer epochs
for the 2-core budget.

Encoder names: `resnet` (SmallResNet, `s1_resnet_arch`) and `vit` (the
small CLIP's vision tower) at tiny/small; `vit_b_32`, `vit_b_16` (CLIP
vision towers) and `resnet50` (torchvision, ImageNet weights) at `paper`.
Text encoders: `clip` (the text tower of the CLIP in use) and `roberta`.
"""

FIELDS = {
    # the grid
    "s1_datasets": (list[str], {"tiny": ["synthworld"], "small": ["synthworld"],
                                "paper": ["cifar10", "cifar100", "imagenet"]}),
    "s1_image_encoders": (list[str], {"tiny": ["resnet", "vit"], "small": ["resnet", "vit"],
                                      "paper": ["vit_b_32", "vit_b_16", "resnet50"]}),
    "s1_text_encoders": (list[str], ["clip", "roberta"]),
    # image encoders whose grid cells train students (the costly part); the others report teachers only
    "s1_student_encoders": (list[str], {"tiny": ["resnet"], "small": ["resnet", "vit"],
                                        "paper": ["vit_b_32", "vit_b_16", "resnet50"]}),
    "s1_resnet_arch": (str, {"tiny": "resnet_xs", "small": "resnet_s", "paper": "resnet50"}),
    # ablations run on one cell of the grid: the first data set, this image and this text encoder
    "s1_ablation_encoder": (str, {"tiny": "resnet", "small": "resnet", "paper": "vit_b_32"}),
    "s1_ablation_text": (str, "clip"),
    "s1_few_shot_k": (list[int], {"tiny": [1, 5], "small": [1, 5, 10, 50], "paper": [1, 5, 10, 50]}),
    "s1_few_shot_head_steps": (int, {"tiny": 2, "small": 300, "paper": 2000}),
    "s1_few_shot_steps": (int, {"tiny": 2, "small": 200, "paper": 5000}),   # student steps, batch s1_few_shot_batch
    "s1_few_shot_batch": (int, {"tiny": 16, "small": 32, "paper": 64}),
    "s1_generations": (int, {"tiny": 2, "small": 3, "paper": 3}),
    "s1_captions": (bool, True),
    "s1_retrieval_gallery": (int, {"tiny": 100, "small": 1000, "paper": 5000}),
    "s1_retrieval_epochs": (int, {"tiny": 2, "small": 20, "paper": 20}),
    # the image-text head (trained on frozen encoder outputs)
    "s1_head_dim": (int, {"tiny": 32, "small": 64, "paper": 512}),
    "s1_head_heads": (int, {"tiny": 2, "small": 4, "paper": 8}),
    "s1_head_epochs": (int, {"tiny": 2, "small": 6, "paper": 10}),
    "s1_head_lr": (float, 1e-3),
    # students: fresh copies of the image encoder's architecture + a linear layer;
    # SGD (momentum 0.9, weight decay 5e-4) for ResNets, AdamW (weight decay 0.05) for ViTs
    "s1_student_epochs": (int, {"tiny": 1, "small": 4, "paper": 100}),
    "s1_student_batch_size": (int, {"tiny": 32, "small": 64, "paper": 128}),
    "s1_resnet_student_lr": (float, 0.1),
    "s1_vit_student_lr": (float, {"tiny": 2e-3, "small": 2e-3, "paper": 5e-4}),
    # the small RoBERTa-style text encoder: masked-language-model pretraining on source captions (cached)
    "s1_text_hidden": (int, {"tiny": 32, "small": 64, "paper": 64}),
    "s1_text_layers": (int, 2),
    "s1_mlm_epochs": (int, {"tiny": 1, "small": 2, "paper": 0}),
    # frozen encoder outputs are cached (memory and disk) below this size, else computed per batch
    "s1_feature_cache_mb": (int, 2048),
    # `paper` checkpoints (relative paths are under weights_root), as saved by save_pretrained
    "s1_clip_b32": (str, "openai/clip-vit-base-patch32"),
    "s1_clip_b16": (str, "openai/clip-vit-base-patch16"),
    "s1_roberta": (str, "roberta-base"),
    "s1_captioner": (str, "Salesforce/blip-image-captioning-base"),
    "s1_resnet50_weights": (str, "IMAGENET1K_V2"),
    # `paper` data (relative to data_root): ImageNet as train/<wnid>/ and val/<wnid>/ folders
    "s1_imagenet_dir": (str, "imagenet"),
}
