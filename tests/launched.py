"""The start of every data-parallel test script: `out, processes = start()` before any other kdutils import.

Reads `OUT_DIR PROCESSES` from the command line, keeps the cache in OUT_DIR/cache, runs one torch thread
(as each launched process does) and signs every checkpoint write: a process that writes one leaves
OUT_DIR/saved-by-rank-R-of-N, so a test can check that only the main process writes.
"""

import os
import sys
from pathlib import Path


def start() -> tuple[Path, int]:
    out, processes = Path(sys.argv[1]), int(sys.argv[2])
    os.environ["KD_CACHE_DIR"] = str(out / "cache")
    import torch

    sign_checkpoints(out)
    torch.set_num_threads(1)
    return out, processes


def sign_checkpoints(out: Path) -> None:
    """Make every `checkpoint.save_checkpoint` call leave OUT_DIR/saved-by-rank-R-of-N (R, N: this process's rank and
    the number of processes)."""
    from kdutils import checkpoint

    save = checkpoint.save_checkpoint

    def save_and_sign(obj, path):
        (out / f"saved-by-rank-{os.environ.get('RANK', '0')}-of-{os.environ.get('WORLD_SIZE', '1')}").touch()
        save(obj, path)

    checkpoint.save_checkpoint = save_and_sign
