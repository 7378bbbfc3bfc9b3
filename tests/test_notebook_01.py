"""Notebook 01 (self-distillation through an image-text head) at tiny, at paper on fixtures (dry run), without data."""

from __future__ import annotations

import json
import time

import pytest
import torch

from kdutils import runner, text
from kdutils.clip import small_clip_config
from kdutils.stats import VERDICTS, paired_verdict
from tests.fixtures import paper_run_failure, write_cifar, write_image_folder

STEM = "01_clip_head_self_distillation"
FIGURES = {"1_grid_bars.png", "2_grid_gain_heatmap.png", "3_generations.png", "4_few_shot.png",
           "5_attention_maps.png", "6_training_curves.png", "7_data_prompts_captions.png", "8_retrieval.png",
           "9_mean_teacher.png"}


def check_results(results: dict, datasets: list[str], image_encoders: list[str], text_encoders: list[str]):
    """Keys and ranges every profile must produce."""
    m = results["metrics"]
    for key in ("grid_students", "summary", "per_seed", "ablation", "encoders", "timings_s"):
        assert key in m, key
    seeds = set(results["seeds"])
    for dname in datasets:
        grid = m["grid_students"][f"{dname} top1"]
        assert set(grid) == set(image_encoders)
        for cells in grid.values():
            assert set(cells) == {f"{t} / {w}" for t in text_encoders for w in ("without text", "with text")}
            for v in cells.values():
                assert v == "not run at this profile" or 0 <= v <= 100
    rows = m["per_seed"]
    assert {r["seed"] for r in rows} == seeds
    assert all(0 <= r["top1"] <= 100 for r in rows)
    models = {r["model"] for r in rows}
    for name in ("probe", "teacher without text", "thesis head, train, true prompt",
                 "thesis head, test, true prompt (leak)", "thesis head, test, label-free", "label-free head, test",
                 "student alone", "student without text", "student with text", "student of the label-free head"):
        assert name in models, name
    ab = m["ablation"]
    gens = ab["generations"]
    assert {g["chain"] for g in gens} == {"with text", "without text"}
    assert max(g["generation"] for g in gens) == results["config"]["s1_generations"]
    assert {f["k"] for f in ab["few_shot"]} == set(results["config"]["s1_few_shot_k"])
    for row in ab["few_shot"]:
        for col in ("teacher without text", "label-free head", "student without text",
                    "student with text"):
            assert 0 <= row[col] <= 100
    # per student family: with vs without text and vs alone; head, Born-Again, the label-free head's student,
    # captions, generations, few-shot, retrieval, draft 002's mean teacher
    n_families = len(results["config"]["s1_student_encoders"])
    assert {c["verdict"] for c in results["claims"]} <= set(VERDICTS)
    assert len(results["claims"]) == 2 * n_families + 8
    rows = ab["mean_teacher"]["rows"]
    assert {r["model"] for r in rows} == {"zero-shot CLIP", "fine-tuned on the pairs alone",
                                          "mean teacher (+ unpaired images)"}
    assert all(0 <= r[k] <= 100 for r in rows for k in ("i2t_r1", "i2t_r10", "t2i_r5"))
    for c in results["claims"]:
        if c["basis"] == "seeds":
            assert c["ours"]["n"] == len(results["seeds"])
            assert c.get("verdict_if_measured", c["verdict"]) == paired_verdict(c["ours"]["per_seed"]).name
    return m


@pytest.mark.notebook
def test_notebook_01_tiny(tmp_path):
    t0 = time.perf_counter()
    runner.run([STEM], "tiny", {}, output_root=tmp_path, progress=False)
    elapsed = time.perf_counter() - t0
    out = tmp_path / STEM
    results = json.loads((out / "results.json").read_text())
    m = check_results(results, ["synthworld"], ["resnet", "vit"], ["clip", "roberta"])
    assert FIGURES <= {p.name for p in out.glob("*.png")} and FIGURES <= set(results["figures"])
    models = {r["model"] for r in m["per_seed"]}
    assert {"caption head, test, own caption (leak)", "student of the caption head"} <= models
    retrieval = m["ablation"]["retrieval"]
    assert {r["model"] for r in retrieval} >= {"pretrained encoder (frozen)", "student with text"}
    assert all(0 <= r[f"{d}_r{k}"] <= 100 for r in retrieval for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert all(r["i2t_r1"] <= r["i2t_r5"] <= r["i2t_r10"] for r in retrieval)
    assert {c["verdict"] for c in results["claims"]} == {"not measured at this profile"}  # tiny measures nothing
    assert m["encoders"]["backbone_seeds"] == {"0": 0}  # one backbone seed, shared by every replicate
    assert m["encoders"]["pretraining"]["0"]["small_clip"]["target_zero_shot_top1"] >= 0
    print(f"notebook 01 at tiny: {elapsed:.1f} s")


def write_paper_fixtures(root):
    """CIFAR-10/100 python batches, a 1,000-class ImageNet tree, and tiny random CLIP, RoBERTa and BLIP models
    saved with `save_pretrained` (with their tokenizers) where the `paper` profile looks for them."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, CLIPModel)

    from kdutils.selfdistill_data import imagenet_class_names

    data, weights = root / "data", root / "weights"
    write_cifar(data, "cifar10", n_train=60, n_test=20, seed=0)
    write_cifar(data, "cifar100", n_train=60, n_test=20, seed=1)
    wnids = [f"n{i:08d}" for i in range(len(imagenet_class_names()))]
    write_image_folder(data / "imagenet" / "train", wnids, n_per_class=1, size=12, seed=0, ext="JPEG")
    write_image_folder(data / "imagenet" / "val", wnids, n_per_class=1, size=12, seed=1, ext="JPEG")
    words = sorted({w.lower() for name in ("airplane automobile bird cat deer dog frog horse ship truck",)
                    for w in name.split()} | {"this", "is", "an", "image", "of", "a"})
    tok = text.build_tokenizer(words, max_length=24)
    torch.manual_seed(0)
    clip_dir = weights / "openai" / "clip-vit-base-patch32"
    CLIPModel(small_clip_config(len(tok), image_size=32, patch_size=8, vision_hidden=32, vision_layers=1,
                                text_hidden=32, text_layers=1, heads=2, projection_dim=16, max_positions=24,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                                eos_token_id=tok.sep_token_id)).save_pretrained(clip_dir)
    tok.save_pretrained(clip_dir)
    roberta_dir = weights / "roberta-base"
    roberta = text.small_text_model("roberta", len(tok), hidden=32, layers=1, heads=2, max_positions=24)
    roberta.save_pretrained(roberta_dir)
    tok.save_pretrained(roberta_dir)
    blip_dir = weights / "Salesforce" / "blip-image-captioning-base"
    blip_dir.mkdir(parents=True)
    (blip_dir / "vocab.txt").write_text("\n".join([*text.SPECIAL_TOKENS, *words]))
    bert_tok = BertTokenizerFast(vocab_file=str(blip_dir / "vocab.txt"))
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=bert_tok).save_pretrained(blip_dir)
    BlipForConditionalGeneration(BlipConfig(
        text_config=dict(vocab_size=len(text.SPECIAL_TOKENS) + len(words), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32, bos_token_id=2,
                         eos_token_id=3, sep_token_id=3, pad_token_id=0, max_position_embeddings=40),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=32)).save_pretrained(blip_dir)
    return data, weights


@pytest.mark.notebook
def test_notebook_01_paper_dry_run_on_fixtures(tmp_path):
    data, weights = write_paper_fixtures(tmp_path)
    params = {"dry_run": True, "data_root": str(data), "weights_root": str(weights), "image_size": 32,
              "batch_size": 16, "num_workers": 0, "s1_clip_b16": "openai/clip-vit-base-patch32",
              "s1_few_shot_k": [1], "s1_generations": 2, "s1_retrieval_gallery": 20, "s1_head_dim": 16,
              "s1_head_heads": 2,
              # ViT-B/16 runs the code of ViT-B/32 (the fixture serves one CLIP for both): the two families suffice
              "s1_image_encoders": ["vit_b_32", "resnet50"], "s1_student_encoders": ["vit_b_32", "resnet50"]}
    runner.run([STEM], "paper", params, output_root=tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / STEM / "results.json").read_text())
    m = check_results(results, ["cifar10", "cifar100", "imagenet"], ["vit_b_32", "resnet50"], ["clip", "roberta"])
    assert "cifar100 top5" in m["grid_students"] and "imagenet top5" in m["grid_students"]
    descriptions = " ".join(r["description"] for r in m["encoders"]["rows"])
    assert "clip-vit-base-patch32" in descriptions and "torchvision resnet50" in descriptions
    assert "roberta-base" in descriptions
    assert {c["verdict"] for c in results["claims"]} == {"not measured at this profile"}  # a dry run measures nothing
    imagenet = [r for r in m["per_seed"] if r["dataset"] == "imagenet" and r["model"] == "student with text"]
    assert imagenet and all(0 <= r["top5"] <= 100 for r in imagenet)
    assert FIGURES <= set(results["figures"])


@pytest.mark.notebook
def test_notebook_01_paper_without_data_fails_fast(tmp_path):
    missing = tmp_path / "nothing"
    message = paper_run_failure(STEM, tmp_path, {"data_root": str(missing), "weights_root": str(missing)})
    for expected in ("cifar-10-batches-py", "cifar-100-python", "imagenet", "clip-vit-base-patch32",
                     "clip-vit-base-patch16", "roberta-base", "blip-image-captioning-base", "resnet50",
                     "huggingface-cli download"):
        assert expected in message, expected


def _planted_runs(seeds=(0, 1, 2)):
    """Measured rows with planted per-seed gains (see the expectations in the test below)."""
    records, gens, few, retrieval, mt_rows = [], [], [], [], []
    for i, seed in enumerate(seeds):
        wobble = (-0.2, 0.0, 0.2)[i]

        def add(enc, text_encoder, model, top1):
            records.append({"seed": seed, "dataset": "synthworld", "image_encoder": enc, "text_encoder": text_encoder,
                            "model": model, "top1": top1})

        for enc, text_gain in (("resnet", {"clip": 1.0, "roberta": 3.0}), ("vit", {"clip": -3.0, "roberta": -1.0})):
            add(enc, "-", "student alone", 50.0 + 5 * i)             # a seed effect shared by the pairs
            add(enc, "-", "student without text", 51.0 + 5 * i + wobble)
            add(enc, "-", "teacher without text", 60.0)
            for text_encoder, gain in text_gain.items():
                add(enc, text_encoder, "student with text", 51.0 + 5 * i + wobble + gain + wobble)
                add(enc, text_encoder, "thesis head, test, label-free", 60.0 + (1.0, -1.0, 0.5)[i])
        add("resnet", "clip", "student of the label-free head", 51.0 + 5 * i + wobble + 4.0 + wobble)
        add("resnet", "clip", "student of the caption head", 51.0 + 5 * i + 3 * wobble + 1.0 - 3.0)
        for chain in ("with text", "without text"):
            gens += [{"seed": seed, "chain": chain, "generation": g, "top1": 50.0 + g * (1 + wobble)}
                     for g in (0, 1, 2)]
        for k in (1, 50):
            few.append({"seed": seed, "k": k, "student without text": 30.0, "student with text": 30.0 + k + wobble})
        retrieval += [{"seed": seed, "model": "student without text", "i2t_r10": 20.0},
                      {"seed": seed, "model": "student with text", "i2t_r10": 20.0 - 2 + wobble}]
        mt_rows += [{"seed": seed, "model": "fine-tuned on the pairs alone", "i2t_r10": 40.0},
                    {"seed": seed, "model": "mean teacher (+ unpaired images)", "i2t_r10": 40.0 + (0.3, -0.4, 0.2)[i]}]
    return records, gens, few, retrieval, mt_rows


def _run_table_and_claims_cells(cfg):
    """The notebook's Table 3.1 cell and its claims cell, executed as written on the planted runs."""
    from types import SimpleNamespace

    import nbformat
    import numpy as np
    import pandas as pd

    from kdutils import session
    from kdutils.paths import NOTEBOOKS_DIR

    cells = nbformat.read(NOTEBOOKS_DIR / f"{STEM}.ipynb", 4).cells
    table_cell = next(c.source for c in cells if c.source.startswith("df = pd.DataFrame(records)\nmetric_cols"))
    claims_cell = next(c.source for c in cells if c.source.startswith("claim = session.claims_for(cfg)"))
    records, gens, few, retrieval, mt_rows = _planted_runs()
    namespace = {"np": np, "pd": pd, "session": session, "cfg": cfg, "records": records,
                 "data": {"synthworld": SimpleNamespace(num_classes=10)}, "display": lambda *args, **kwargs: None,
                 "Markdown": str, "gens": pd.DataFrame(gens), "few_df": pd.DataFrame(few), "retrieval": retrieval,
                 "mean_teacher_rows": mt_rows, "E": cfg.s1_ablation_encoder, "T": cfg.s1_ablation_text,
                 "ABLATION_DATA": cfg.s1_datasets[0]}
    exec(table_cell, namespace)
    exec(claims_cell, namespace)
    return namespace


def test_the_table_and_claims_cells_judge_planted_runs():
    """Study 1's own Table 3.1 and claims cells, executed as written on planted per-seed runs at `small` (every
    rule runs): the table holds the planted means, and each claim gets the verdict its planted numbers call for,
    from per-seed gains in which a seed's cells are averaged, never counted as replicates."""
    from kdutils.profiles import load_profile

    cfg = load_profile("small", progress=False)
    assert cfg.s1_student_encoders == ["resnet", "vit"] and min(cfg.s1_few_shot_k) == 1 and cfg.s1_generations == 2
    namespace = _run_table_and_claims_cells(cfg)
    grid = namespace["grid"]["synthworld top1"]  # mean over seeds of the planted students
    assert grid["resnet"][("clip", "with text")] == 57.0 and grid["resnet"][("clip", "without text")] == 56.0
    assert grid["vit"][("roberta", "with text")] == 55.0 and grid["vit"][("roberta", "without text")] == 56.0
    assert "synthworld top5" not in namespace["grid"]  # ten classes: top-1 only
    rows = {c["claim"]: c for c in namespace["claims"]}
    expected = {  # claim start -> (verdict, per-seed gains)
        "Self-distillation with text beats self-distillation without text (resnet": ("reproduced", [1.8, 2.0, 2.2]),
        "Self-distillation with text beats the same student trained alone (resnet": ("reproduced", [2.6, 3.0, 3.4]),
        "Self-distillation with text beats self-distillation without text (vit": ("not reproduced", [-2.2, -2.0, -1.8]),
        "Self-distillation with text beats the same student trained alone (vit": ("not reproduced", [-1.4, -1.0, -0.6]),
        "The text-queried head": ("within noise", [1.0, -1.0, 0.5]),
        "Self-distillation without text beats": ("reproduced", [0.8, 1.0, 1.2]),
        "Text without the label in the query": ("reproduced", [3.8, 4.0, 4.2]),
        "Detailed captions": ("not reproduced", [-3.2, -3.0, -2.8]),
        "A second generation": ("reproduced", [0.8, 1.0, 1.2]),
        "With few labels (1 per class)": ("reproduced", [0.8, 1.0, 1.2]),
        "Self-distillation through text makes": ("not reproduced", [-2.2, -2.0, -1.8]),
        "Draft 002": ("within noise", [0.3, -0.4, 0.2]),
    }
    assert len(rows) == len(expected)
    for start, (verdict, per_seed) in expected.items():
        (row,) = [r for name, r in rows.items() if name.startswith(start)]
        assert row["ours"]["n"] == 3 and row["ours"]["per_seed"] == pytest.approx(per_seed), start
        assert row["verdict"] == verdict == paired_verdict(per_seed).name, (start, row["measured"])
    assert rows["Detailed captions as queries add about +3 points over class prompts (resnet + clip students)"][
        "paper_inside"] is False
    # the same rules at tiny (and in dry runs) report every claim as not measured
    tiny = _run_table_and_claims_cells(load_profile("tiny", progress=False, seeds=[0, 1, 2],
                                                    s1_student_encoders=["resnet", "vit"]))
    assert len(tiny["claims"]) == len(expected)
    assert {c["verdict"] for c in tiny["claims"]} == {"not measured at this profile"}
