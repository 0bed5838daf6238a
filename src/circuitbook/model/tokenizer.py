"""Tokenizer: the model directory's tokenizer.json, or GPT-2 style vocab.json + merges.txt, via `tokenizers`."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers


class Tokenizer:
    """Thin wrapper with the few calls circuitbook needs. ``bos_id`` is the story separator token the
    model was trained with (GPT-2 BPE: <|endoftext|> = 50256; TinyStories-656K: <|start_story|> = 1)."""

    def __init__(self, tok: _HFTokenizer, bos_id: int | None, eos_id: int | None = None):
        self._tok = tok
        self.bos_id = bos_id
        self.eos_id = eos_id if eos_id is not None else bos_id

    @classmethod
    def from_dir(cls, path: str | Path, bos_id: int | None = None, eos_id: int | None = None) -> "Tokenizer":
        path = Path(path)
        if (path / "tokenizer.json").exists():
            tok = _HFTokenizer.from_file(str(path / "tokenizer.json"))
        else:
            pairs = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
            found = next(((path / v, path / m) for v, m in pairs if (path / v).exists() and (path / m).exists()), None)
            if found is None:
                raise FileNotFoundError(f"{path} has no tokenizer.json nor vocab.json + merges.txt")
            tok = _byte_level_bpe(*found)
        if bos_id is None:
            bos_id = _special_id(path, tok, "bos_token")
        if eos_id is None:
            eos_id = _special_id(path, tok, "eos_token")
        return cls(tok, bos_id, eos_id)

    def encode(self, text: str) -> list[int]:
        """Ids of the text alone: no BOS/EOS added (the corpus reader adds the separators)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_str(self, i: int) -> str:
        """How token i reads as text on its own (leading spaces kept)."""
        return self._strs[i]

    @cached_property
    def _strs(self) -> list[str]:
        return [self._tok.decode([i], skip_special_tokens=False) for i in range(self.vocab_size)]

    def token_strs(self) -> list[str]:
        return list(self._strs)

    def to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def _byte_level_bpe(vocab: Path, merges: Path) -> _HFTokenizer:
    """GPT-2's byte-level BPE from its two files (the model class reads both formats, with or without
    the '#version' header)."""
    tok = _HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    if tok.token_to_id(eot) is not None:
        from tokenizers import AddedToken

        tok.add_special_tokens([AddedToken(eot, special=True)])
    return tok


def _special_id(path: Path, tok: _HFTokenizer, key: str) -> int | None:
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / fname
        if f.exists():
            val = json.loads(f.read_text()).get(key)
            if isinstance(val, dict):
                val = val.get("content")
            if isinstance(val, str) and tok.token_to_id(val) is not None:
                return tok.token_to_id(val)
    return tok.token_to_id("<|endoftext|>")
