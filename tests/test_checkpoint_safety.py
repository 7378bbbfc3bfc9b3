"""Checkpoints: a corrupt one stops with its path and the remedy; a kill mid-write keeps the previous one."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from kdutils.checkpoint import load_checkpoint, save_checkpoint
from kdutils.errors import CorruptFileError
from kdutils.optim import make_optimizer
from kdutils.train import fit


def _fit(ckpt):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    opt = make_optimizer(model.parameters(), "sgd", lr=0.1)
    return fit(model, loader, lambda b: {"loss": nn.functional.cross_entropy(model(b[0]), b[1])}, opt, 2,
               checkpoint=ckpt, checkpoint_key="k", progress=False)


def test_truncated_checkpoint_stops_with_its_path_and_the_remedy(tmp_path):
    ckpt = tmp_path / "run.pt"
    _fit(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=r"checkpoint .*run.pt cannot be read.*truncated.*Delete it"):
        _fit(ckpt)
    ckpt.unlink()  # the remedy works
    assert len(_fit(ckpt).epochs) == 2


def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_usable(tmp_path):
    ckpt = tmp_path / "run.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from kdutils import checkpoint
        checkpoint.save_checkpoint({{"key": "epoch 1", "w": torch.ones(3)}}, {str(ckpt)!r})
        real_save = torch.save

        def dying_save(obj, f, *args, **kwargs):  # half the file is on disk when the process dies
            real_save(obj, f, *args, **kwargs)
            os.truncate(f, os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
        checkpoint.save_checkpoint({{"key": "epoch 2", "w": torch.zeros(100_000)}}, {str(ckpt)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    state = load_checkpoint(ckpt)
    assert state["key"] == "epoch 1" and torch.equal(state["w"], torch.ones(3))
    save_checkpoint({"key": "epoch 2"}, ckpt)  # the next write replaces it, leftovers or not
    assert load_checkpoint(ckpt)["key"] == "epoch 2"
