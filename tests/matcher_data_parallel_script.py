"""Study 2's teacher fine-tuning (`matching.train_matcher`, a small CLIP as a binary matcher) with `num_processes`:
the study data-parallel test runs it with 1 and with 2 processes.

Usage: python matcher_data_parallel_script.py OUT_DIR PROCESSES. 30 SynthWorld pairs, batches of 15 (shares of 7
and 8), the cache in OUT_DIR/cache. Writes OUT_DIR/result.pt; a process that writes a checkpoint leaves
OUT_DIR/saved-by-rank-R-of-N.
"""

from launched import start

out, processes = start()

import torch
from transformers import CLIPModel

from kdutils import matching
from kdutils.clip import SMALL_CLIP_ARCHS, small_clip_config
from kdutils.pairs import PairDataset, random_negative_pairs
from kdutils.splits import from_synth
from kdutils.synthworld import generate, vocabulary
from kdutils.text import build_tokenizer, quiet_transformers

tok = build_tokenizer(vocabulary(), max_length=32)
batch = generate("target", 30, seed=5)
images = from_synth(batch)
data = PairDataset(random_negative_pairs(batch.captions, 0), images, {"teacher": tok, "student": tok})
torch.manual_seed(0)
with quiet_transformers():
    model = matching.ClipMatcher(CLIPModel(small_clip_config(len(tok), **SMALL_CLIP_ARCHS["clip_xs"])))
history = matching.train_matcher(model, data, data, epochs=2, lr=1e-3, batch_size=15, seed=0, cache_tag="dp",
                                 progress=False, num_processes=processes)
torch.save({"model": model.state_dict(), "epochs": history.epochs}, out / "result.pt")
