import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdutils.errors import ConfigError, NonFiniteLossError
from kdutils.optim import make_optimizer, make_scheduler, warmup_cosine
from kdutils.train import fit, seed_everything

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from train_script import make_run  # noqa: E402


def _train(ckpt=None, epochs=4, seed=3):
    model, loader, opt, sched, evaluate = make_run(seed)

    def compute_loss(batch):
        xb, yb = batch
        return {"loss": nn.functional.cross_entropy(model(xb), yb)}

    hist = fit(model, loader, compute_loss, opt, epochs=epochs, scheduler=sched, evaluate=evaluate,
               monitor="val_acc", checkpoint=ckpt, checkpoint_key="k", progress=False)
    return model, hist


def _strip(hist):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in hist.epochs]


def test_same_seed_gives_identical_metrics_and_weights():
    m1, h1 = _train(seed=11)
    m2, h2 = _train(seed=11)
    assert _strip(h1) == _strip(h2)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    _, h3 = _train(seed=12)
    assert _strip(h3) != _strip(h1)


def test_training_learns_the_task():
    _, hist = _train(epochs=5)
    assert hist.epochs[-1]["val_acc"] > 80
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    script = str(HERE / "train_script.py")

    def run(ckpt, out, *kill):
        return subprocess.run([sys.executable, script, str(ckpt), str(out), *map(str, kill)],
                              capture_output=True, text=True, timeout=120)

    full = run(tmp_path / "a.pt", tmp_path / "a.json")
    assert full.returncode == 0, full.stderr
    killed = run(tmp_path / "b.pt", tmp_path / "b.json", 3, 2)  # dies in epoch 3, step 2
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    assert not (tmp_path / "b.json").exists()
    state = torch.load(tmp_path / "b.pt", weights_only=False)
    assert len(state["history"]["epochs"]) == 2  # epochs 1 and 2 were checkpointed
    resumed = run(tmp_path / "b.pt", tmp_path / "b.json")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["epochs"] == b["epochs"]
    assert a["weights"] == b["weights"]
    assert a["steps_run"] == 5 * a["batches"] and b["steps_run"] == 3 * b["batches"]  # it resumed at epoch 3


def test_finished_checkpoint_returns_without_training(tmp_path):
    m1, h1 = _train(tmp_path / "c.pt", epochs=3)
    m2, h2 = _train(tmp_path / "c.pt", epochs=3)
    assert _strip(h1) == _strip(h2)
    assert [e["seconds"] for e in h1.epochs] == [e["seconds"] for e in h2.epochs]  # loaded, not re-run
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    model, loader, opt, _, _ = make_run()
    loss = lambda b: {"loss": nn.functional.cross_entropy(model(b[0]), b[1])}  # noqa: E731
    fit(model, loader, loss, opt, epochs=1, checkpoint=tmp_path / "x.pt", checkpoint_key="one", progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        fit(model, loader, loss, opt, epochs=2, checkpoint=tmp_path / "x.pt", checkpoint_key="two",
            progress=False)


def test_nan_loss_names_epoch_and_step():
    model, loader, opt, _, _ = make_run()
    calls = {"n": 0}

    def compute_loss(batch):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        if calls["n"] == len(loader) + 3:  # epoch 2, step 3
            loss = loss * float("nan")
        return {"loss": loss}

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3"):
        fit(model, loader, compute_loss, opt, epochs=3, progress=False)


def test_early_stopping_and_plateau_factor():
    model = nn.Linear(2, 2)
    loader = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    opt = make_optimizer(model.parameters(), "sgd", lr=1.0)
    sched = make_scheduler(opt, "plateau", plateau_factor=0.9, plateau_patience=1)
    scores = iter([50.0, 60.0, 55.0, 55.0, 58.0, 59.0, 70.0, 80.0])
    hist = fit(model, loader, lambda b: {"loss": model(b[0]).sum() * 0}, opt, epochs=8,
               scheduler=sched, evaluate=lambda: {"val_acc": next(scores)}, monitor="val_acc",
               patience=3, progress=False)
    assert hist.stopped_early and len(hist.epochs) == 5  # 60 at epoch 2, then 3 epochs without a better one
    assert hist.best_epoch == 2 and hist.best_value == 60.0
    lrs = hist.series("lr")
    # ReduceLROnPlateau (patience 1) cuts after the 2nd bad epoch: epoch 4; the lr is logged before the step.
    assert lrs[:4] == [1.0] * 4 and math.isclose(lrs[4], 0.9)


def test_restore_best_weights():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    loader = [(torch.ones(1, 1),)]
    opt = make_optimizer(model.parameters(), "sgd", lr=1.0, momentum=0.0)
    # loss = -w, so w grows by 1 each epoch; metric peaks at epoch 2 (w = 2)
    scores = iter([1.0, 5.0, 2.0])
    fit(model, loader, lambda b: {"loss": -model(b[0]).sum()}, opt, epochs=3,
        evaluate=lambda: {"m": next(scores)}, monitor="m", restore_best=True, progress=False)
    assert model.weight.item() == pytest.approx(2.0)


def test_warmup_cosine_schedule_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected)


def test_dry_run_step_cap():
    model, loader, opt, _, _ = make_run()
    seen = {"n": 0}

    def compute_loss(batch):
        seen["n"] += 1
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    fit(model, loader, compute_loss, opt, epochs=2, max_steps_per_epoch=2, progress=False)
    assert seen["n"] == 4


def test_bad_arguments_fail_early():
    model, loader, opt, _, _ = make_run()
    with pytest.raises(ConfigError, match="evaluate"):
        fit(model, loader, lambda b: {}, opt, epochs=1, patience=2)
    with pytest.raises(ConfigError, match="unknown"):
        make_optimizer(model.parameters(), "lbfgs", lr=0.1)
    with pytest.raises(ConfigError, match="trainable"):
        make_optimizer([nn.Parameter(torch.zeros(1), requires_grad=False)], "sgd", lr=0.1)
    seed_everything(0)


def test_train_with_a_recipe_equals_fit_with_the_same_optimiser_and_schedule():
    from kdutils.distillers import CrossEntropy
    from kdutils.recipes import Recipe
    from kdutils.train import train

    _, h_fit = _train(seed=5)
    model, loader, _, _, evaluate = make_run(5)  # make_run's optimiser and schedule, as a recipe
    recipe = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, schedule="plateau", plateau_factor=0.5,
                    plateau_patience=0, epochs=4, monitor="val_acc")
    h_train = train(model, CrossEntropy(), loader, recipe, outputs=lambda b: (model(b[0]), None, b[1]),
                    log=lambda z, _, y: {"acc": (z.argmax(1) == y).float().mean()}, evaluate=evaluate,
                    progress=False)
    assert [e["train_loss"] for e in h_train.epochs] == [e["train_loss"] for e in h_fit.epochs]
    assert [e["val_acc"] for e in h_train.epochs] == [e["val_acc"] for e in h_fit.epochs]
    assert 0 <= h_train.epochs[-1]["train_acc"] <= 1  # what `log` returns is recorded too


def test_recipe_warm_up_and_parameter_groups_reach_the_optimiser_and_schedule():
    from kdutils.recipes import Recipe
    from kdutils.train import train

    # warm-up: a fraction of all steps with a cap, or whole epochs (at most all of them)
    assert Recipe(warmup_fraction=0.1, epochs=3).warmup_steps(100) == 30
    assert Recipe(warmup_fraction=0.1, warmup_cap=20, epochs=3).warmup_steps(100) == 20
    assert Recipe(warmup_epochs=5, epochs=2).warmup_steps(7) == 14
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    groups = [{"params": [model.weight], "weight_decay": 0.5}, {"params": [model.bias], "weight_decay": 0.0}]
    loader = [torch.randn(4, 3) for _ in range(10)]
    lrs = []
    recipe = Recipe(optimizer="adamw", lr=1.0, schedule="warmup_cosine", warmup_fraction=0.2, epochs=2,
                    max_steps=5)
    train(model, lambda x: {"loss": model(x).pow(2).mean()}, loader, recipe, parameters=groups, progress=False,
          on_step=lambda _: lrs.append(None))
    assert len(lrs) == 10 == recipe.total_steps(loader)  # 2 epochs of at most 5 steps
    # the same run by hand: AdamW over the groups, 2 warm-up steps of 10, cosine after
    torch.manual_seed(0)
    manual = nn.Linear(3, 1)
    opt = torch.optim.AdamW([{"params": [manual.weight], "weight_decay": 0.5},
                             {"params": [manual.bias], "weight_decay": 0.0}], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=10)
    for _ in range(2):
        for x in loader[:5]:
            opt.zero_grad()
            manual(x).pow(2).mean().backward()
            opt.step()
            sched.step()
    assert torch.equal(manual.weight, model.weight) and torch.equal(manual.bias, model.bias)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_multi_tensor_optimizers_step_bit_for_bit_like_the_per_tensor_ones(name):
    def trained(**optimizer):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        opt = optimizer.pop("make")(model.parameters(), lr=0.05, weight_decay=0.01, **optimizer)
        x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    ours, ours_params = trained(make=lambda params, **a: make_optimizer(params, name, **a))
    per_tensor = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    extra = {"momentum": 0.9} if name == "sgd" else {}
    _, reference = trained(make=lambda params, **a: per_tensor(params, foreach=False, **a, **extra))
    assert ours.defaults["foreach"] is True
    assert all(torch.equal(a, b) for a, b in zip(ours_params, reference))
