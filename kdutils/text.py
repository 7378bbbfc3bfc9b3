"""Text encoders for the image-text studies (1 and 2), built offline or loaded from disk.

At `small`/`tiny` there is nothing to download: the tokenizer is a
`tokenizers` WordLevel model over SynthWorld's closed vocabulary (every word a
caption or prompt can use), wrapped as a `transformers` fast tokenizer so it
saves and loads like any Hugging Face tokenizer, and the encoder is a
BERT- or RoBERTa-style transformer built from a config (random init). At
`paper` the same `TextEncoder` wraps a published checkpoint such as
`sentence-transformers/all-MiniLM-L6-v2`, read from a local folder.

`TextEncoder.encode` mean-pools the last hidden states over real tokens, as
sentence-transformers' MiniLM does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError, MissingDataError
from .models import seeded_rng

__all__ = ["SPECIAL_TOKENS", "PUNCTUATION", "build_tokenizer", "small_text_model", "tokenize", "mean_pool",
           "token_limit", "TextEncoder", "load_local_model", "load_text_encoder",
           "hf_download_hint", "hf_source", "quiet_transformers"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Punctuation gets its own tokens, so "a star." reads as "a", "star", "." and not [UNK].
PUNCTUATION = tuple(".,;:!?'\"-()")


def build_tokenizer(words: Sequence[str], max_length: int = 32):
    """A BERT-style word-level tokenizer over `words` (lower-cased), built without any download.

    Ids: the special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then
    punctuation, then the sorted words. Text is lower-cased and split on
    whitespace and punctuation; a sequence is `[CLS] words [SEP]`, truncated to
    `max_length` tokens. Unknown words map to [UNK].
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 ([CLS], one word, [SEP]), got {max_length}.")
    words = sorted({w.lower() for w in words} - set(SPECIAL_TOKENS) - set(PUNCTUATION))
    if not words:
        raise ConfigError("build_tokenizer needs a non-empty word list (e.g. synthworld.vocabulary()).")
    bad = [w for w in words if not w.isalnum()]
    if bad:
        raise ConfigError(f"words must be single alphanumeric words (the pre-tokenizer splits the rest), "
                          f"got {bad[:5]}.")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *PUNCTUATION, *words])}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, model_max_length=max_length, padding_side="right", truncation_side="right",
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def small_text_model(kind: str, vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
                     max_positions: int = 64, pad_token_id: int = 0):
    """A randomly initialised BERT (`kind="bert"`) or RoBERTa encoder from a config.

    No pooling layer: the lab mean-pools (`mean_pool`). RoBERTa offsets its
    position ids by `pad_token_id + 1`, so it gets two extra positions.
    """
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    if kind not in ("bert", "roberta"):
        raise ConfigError(f"text model kind must be 'bert' or 'roberta', got {kind!r}.")
    if hidden % heads:
        raise ConfigError(f"hidden ({hidden}) must be divisible by heads ({heads}).")
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=4 * hidden, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                  pad_token_id=pad_token_id)
    if kind == "bert":
        return BertModel(BertConfig(max_position_embeddings=max_positions, **common), add_pooling_layer=False)
    return RobertaModel(RobertaConfig(max_position_embeddings=max_positions + pad_token_id + 2, **common),
                        add_pooling_layer=False)


def token_limit(tokenizer) -> int:
    """The longest input a Hugging Face tokenizer's model takes (its `model_max_length`), at most 512."""
    return min(int(tokenizer.model_max_length), 512)


def tokenize(tokenizer, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (N, L), padded to the longest text, truncated to `max_length` tokens
    (default: `token_limit`)."""
    if isinstance(texts, str):
        raise ValueError("pass a list of texts, not a single string.")
    max_length = max_length or token_limit(tokenizer)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the tokens whose mask is 1 (sentence-transformers' pooling)."""
    if last_hidden_state.dim() != 3 or attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(f"mean_pool needs states (N, L, D) and a mask (N, L), got {tuple(last_hidden_state.shape)} "
                         f"and {tuple(attention_mask.shape)}.")
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """A tokenizer and a transformer encoder: list of strings in, one vector per string out.

    `encode(texts)` tokenizes on the fly (convenient); training loops should
    tokenize once with `tokenize` and call the module on the ids, which is the
    same computation. `normalize=True` L2-normalises the pooled vector, as the
    all-MiniLM-L6-v2 sentence-transformer does.
    """

    def __init__(self, tokenizer, model: nn.Module, max_length: int | None = None, normalize: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length or token_limit(tokenizer)
        self.normalize = normalize

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(states, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, dim) mean-pooled embeddings of `texts` (gradients flow when the module trains)."""
        device = next(self.model.parameters()).device
        return self(**{k: v.to(device) for k, v in self.tokenize(texts).items()})


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (notebooks print their own summary)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hf_download_hint(repo_id: str, dest) -> str:
    """The sentence telling a user how to put a Hub checkpoint at `dest` (nothing downloads at run time)."""
    return (f"Run `huggingface-cli download {repo_id} --local-dir {dest}` (or `hf download {repo_id} "
            f"--local-dir {dest}`) on a machine with internet, and copy that folder to {dest} on this one.")


def hf_source(name_or_path) -> str:
    """A local folder when `name_or_path` is one, else the name (looked up in the HF cache only)."""
    return str(Path(name_or_path)) if Path(name_or_path).is_dir() else str(name_or_path)


def load_local_model(name_or_path, *, config_class, load, build, what: str, repo_id: str, allow_random: bool):
    """(model, tokenizer) of a Hub checkpoint from a folder written by `save_pretrained` (or the HF cache).

    Nothing downloads: `load(source, config)` reads the weights with `local_files_only`. Missing files raise
    `MissingDataError` naming `what`, the path and how to get `repo_id`. The weights are always read when they
    are there; `allow_random` (dry runs) lets a folder holding only a config and a tokenizer get random weights
    instead, `build(config)` inside `models.seeded_rng` (the same placeholder every dry run), with a printed note.
    """
    from transformers import AutoTokenizer

    source, hint = hf_source(name_or_path), hf_download_hint(repo_id, name_or_path)
    with quiet_transformers():
        try:
            config = config_class.from_pretrained(source, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as err:
            raise MissingDataError(f"{what} (config and tokenizer)", name_or_path,
                                   f"{hint} [{type(err).__name__}]") from None
        try:
            model = load(source, config)
        except (OSError, ValueError) as err:
            if not allow_random:
                raise MissingDataError(f"{what} weights", name_or_path, f"{hint} [{type(err).__name__}]") from None
            with seeded_rng():
                model = build(config)
            print(f"[{what}] dry run: random weights for {name_or_path} (no checkpoint found)")
    return model, tokenizer


def load_text_encoder(name_or_path, allow_random: bool = False, normalize: bool = False,
                      repo_id: str | None = None) -> TextEncoder:
    """A pretrained text encoder from disk (`load_local_model`; `repo_id` names the Hub repository in the
    hint, default `name_or_path`)."""
    from transformers import AutoConfig, AutoModel

    def no_pooler(config) -> dict:
        return {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}

    model, tokenizer = load_local_model(
        name_or_path, config_class=AutoConfig, what="text encoder", repo_id=repo_id or str(name_or_path),
        allow_random=allow_random,
        load=lambda source, config: AutoModel.from_pretrained(source, local_files_only=True, **no_pooler(config)),
        build=lambda config: AutoModel.from_config(config, **no_pooler(config)))
    return TextEncoder(tokenizer, model, normalize=normalize)
