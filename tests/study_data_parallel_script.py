"""Study 3's KASSL student and BYOL baseline through `kassl.train_student` / `kassl_encoders.train_baseline` with a
profile's `num_processes`: the study data-parallel test runs it with 1 and with 2 processes.

Usage: python study_data_parallel_script.py OUT_DIR PROCESSES. Toy data (45 images of 16x16, batches of 15, so
two processes get shares of 7 and 8), a toy frozen teacher, the cache in OUT_DIR/cache. Writes OUT_DIR/result.pt
(what the functions return in this process); a process that writes a checkpoint leaves
OUT_DIR/saved-by-rank-R-of-N.
"""

import sys

from launched import start

out, processes = start()

import torch
from torch import nn

from kdutils import kassl
from kdutils.kassl_encoders import SSLRecipe, train_baseline
from kdutils.kassl_views import AugmentedViewBank
from kdutils.profiles import load_profile
from kdutils.splits import Split, StudyData
from kdutils.augment import view_pair
from kdutils.teacher import FrozenTeacher

cfg = load_profile("tiny", num_processes=processes, s3_kassl_batch=15, s3_kassl_epochs=2, s3_kassl_lr=0.02,
                   s3_kassl_warmup_epochs=0, s3_extension_hidden=16, s3_reduced_dim=4, s3_ssl_batch=15,
                   s3_moco_bn_splits=1, s3_baseline_epochs=1, s3_ssl_hidden=16, s3_ssl_proj_dim=8)
gen = torch.Generator().manual_seed(3)
images = (torch.rand(45, 3, 16, 16, generator=gen) * 255).to(torch.uint8)
labels = torch.arange(45) % 3
dataset = Split(images, labels, key="toy-45")
data = StudyData("toy", {"train": dataset, "probe_train": dataset, "probe_test": dataset}, ["a", "b", "c"],
                 {"train": {"toy": 45}, "test": {"toy": 45}})
torch.manual_seed(4)
teacher = FrozenTeacher(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
bank = AugmentedViewBank.draw(images, view_pair(cfg.s3_view_preset, out_size=16), 4, 0, data.key["train"])
student, student_history = kassl.train_student(teacher, {"name": "toy", "feature_dim": 8}, "feature_reduction",
                                               kassl.KASSLStudentRecipe.of(cfg), data, 0, "cpu", bank)
baseline, baseline_history = train_baseline(SSLRecipe.of(cfg, "byol", baseline=True), data, 0, "cpu")
torch.save({"student": student.state_dict(), "student_history": student_history,
            "baseline": baseline.state_dict(), "baseline_history": baseline_history,
            "accelerate_imported": "accelerate" in sys.modules}, out / "result.pt")
