"""A small training run used by the resume test: it can kill itself mid-epoch.

Usage: python train_script.py CHECKPOINT OUT_JSON [KILL_EPOCH KILL_STEP]
"""

import json
import os
import signal
import sys

import torch
from torch import nn

from kdutils.optim import make_optimizer, make_scheduler
from kdutils.train import fit, seed_everything


def make_run(seed: int = 3):
    gen = seed_everything(seed)
    x = torch.randn(96, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                         shuffle=True, generator=gen)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9)
    sched = make_scheduler(opt, "plateau", plateau_factor=0.5, plateau_patience=0)

    def evaluate():
        with torch.no_grad():
            return {"val_acc": float((model(x).argmax(1) == y).float().mean() * 100)}

    return model, loader, opt, sched, evaluate


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    kill = tuple(int(v) for v in sys.argv[3:5]) if len(sys.argv) > 3 else None
    model, loader, opt, sched, evaluate = make_run()
    calls = {"step": 0}

    def compute_loss(batch):
        xb, yb = batch
        calls["step"] += 1
        if kill and calls["step"] == (kill[0] - 1) * len(loader) + kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"loss": nn.functional.cross_entropy(model(xb), yb)}

    hist = fit(model, loader, compute_loss, opt, epochs=5, scheduler=sched, evaluate=evaluate,
               monitor="val_acc", checkpoint=ckpt, checkpoint_key="resume-test", progress=False)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in hist.epochs]
    with open(out, "w") as f:
        json.dump({"epochs": epochs, "weights": weights, "steps_run": calls["step"], "batches": len(loader)}, f)


if __name__ == "__main__":
    main()
