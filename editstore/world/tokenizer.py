"""A word-level tokenizer for the world, built with ``tokenizers`` and saved for ``AutoTokenizer``."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level vocabulary over whitespace-split ``texts``; every encoding starts with ``<bos>``."""
    words = sorted({w for t in texts for w in t.split()})
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="right"
    )
