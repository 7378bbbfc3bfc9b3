"""`fit` under `parallel.launch`: the data-parallel test runs it with 1 and with 2 processes.

Usage: python data_parallel_script.py OUT_DIR PROCESSES EPOCHS. The launching process writes OUT_DIR/result.pt
(loss per epoch and final weights as `launch` returns them, whether accelerate was imported); a process that
writes a checkpoint leaves OUT_DIR/saved-by-rank-R-of-N; the main trainer appends the number of batches it
trained to OUT_DIR/steps-of-rank-0.txt.
"""

import os
import sys
from pathlib import Path

import torch
from launched import sign_checkpoints
from torch import nn

from kdutils import optim, parallel, train


def run(out_dir: str, epochs: int) -> None:
    out = Path(out_dir)
    sign_checkpoints(out)
    gen = train.seed_everything(5)
    x = torch.randn(99, 8)  # the last batch of 3 is shared 1 / 2: shares of unequal size
    y = (x[:, 0] - x[:, 2] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                         generator=gen)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = optim.make_optimizer(model.parameters(), "sgd", lr=0.2, momentum=0.9)
    steps = []

    def compute_loss(batch):
        steps.append(1)
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    history = train.fit(model, loader, compute_loss, opt, epochs, checkpoint=out / "checkpoint.pt",
                        checkpoint_key="data-parallel", progress=False)
    if os.environ.get("RANK") == "0":  # the main trainer: how many batches this launch trained
        with open(out / "steps-of-rank-0.txt", "a") as f:
            f.write(f"{len(steps)}\n")
    if "WORLD_SIZE" not in os.environ:  # the notebook's own process: what `launch` returns
        torch.save({"losses": history.series("train_loss"), "weights": model.state_dict(),
                    "accelerate_imported": "accelerate" in sys.modules}, out / "result.pt")


if __name__ == "__main__":
    out_dir, processes, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parallel.launch(run, (out_dir, epochs), num_processes=processes)
