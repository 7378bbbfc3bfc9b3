"""Study 2's teacher fine-tuning (`matching.train_matcher`, a small CLIP as a binary matcher) with `num_processes`:
the study data-parallel test runs it with 1 and with 2 processes.

Usage: python matcher_data_parallel_script.py OUT_DIR PROCESSES. 30 SynthWorld pairs, batches of 15 (shares of 7
and 8), the cache in OUT_DIR/cache. Writes OUT_DIR/result.pt; a process that writes a checkpoint leaves
OUT_DIR/saved-by-rank-R-of-N.
"""

import os
import sys
from pathlib import Path

out, processes = Path(sys.argv[1]), int(sys.argv[2])
os.environ["KD_CACHE_DIR"] = str(out / "cache")

import torch
from transformers import CLIPModel

from kdutils import matching, train
from kdutils.clip import SMALL_CLIP_ARCHS, small_clip_config
from kdutils.pairs import PairDataset, random_negative_pairs
from kdutils.synthworld import generate, vocabulary
from kdutils.text import build_tokenizer, quiet_transformers

save = train.save_checkpoint


def save_and_sign(obj, path):  # records which process writes a checkpoint
    (out / f"saved-by-rank-{os.environ.get('RANK', '0')}-of-{os.environ.get('WORLD_SIZE', '1')}").touch()
    save(obj, path)


train.save_checkpoint = save_and_sign
torch.set_num_threads(1)  # as each launched process runs
tok = build_tokenizer(vocabulary(), max_length=32)
batch = generate("target", 30, seed=5)
images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).contiguous()
data = PairDataset(random_negative_pairs(batch.captions, 0), images, {"teacher": tok, "student": tok})
torch.manual_seed(0)
with quiet_transformers():
    model = matching.ClipMatcher(CLIPModel(small_clip_config(len(tok), **SMALL_CLIP_ARCHS["clip_xs"])))
history = matching.train_matcher(model, data, data, epochs=2, lr=1e-3, batch_size=15, seed=0, cache_tag="dp",
                                 progress=False, num_processes=processes)
torch.save({"model": model.state_dict(), "epochs": history.epochs}, out / "result.pt")
