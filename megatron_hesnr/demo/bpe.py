"""Training a small byte-level BPE tokenizer with HF ``tokenizers``.

A real tokenizer (``tokenizer.json`` with byte-level pre-tokenization and offsets
into the original text), only with a small vocabulary so that a CPU model can learn
its output distribution in minutes.  Offsets are not trimmed, so the characters a
token covers, and therefore which tokens ``hesnr prepare`` scores, are exact.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Special tokens: end of document first (id 0), then the ChatML markers.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def train_bpe(texts, vocab_size: int, path: Path, min_frequency: int = 2) -> Path:
    """Train on ``texts`` (an iterable of strings) and save ``tokenizer.json`` at ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (>= 259)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False: a token's offsets cover its leading space too, so no
    # character falls between two tokens.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    log.info("trained a byte-level BPE tokenizer: %d tokens -> %s", tok.get_vocab_size(), path)
    return path


def eod_token_id(tokenizer) -> int:
    """Id that separates documents in the training stream."""
    for name in ("<|endoftext|>", "</s>", "<｜end▁of▁sentence｜>", "<eos>", "<|end_of_text|>"):
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return tid
    # A tokenizer without an end-of-document token: the last id, as a separator only.
    return tokenizer.get_vocab_size() - 1
