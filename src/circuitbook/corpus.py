"""Stories in, token batches out.

Formats (``fmt`` or guessed from the path):
  * ``tinystories`` — a .txt file with stories separated by ``<|endoftext|>`` lines (UTF-8 BOM tolerated),
    the format of roneneldan/TinyStories' TinyStories-valid.txt; chosen for a .txt that contains the separator;
  * ``text`` — any other plain text file: stories are blocks separated by one or more blank lines;
  * ``jsonl`` — one JSON object per line with a "text" (or "story") field;
  * ``parquet`` — a .parquet file with a "text" (or "story") string column (the format of the Hugging Face
    hub's dataset files), read one record batch at a time with pyarrow (the ``datasets`` extra);
  * ``hf:NAME[:SPLIT[:FIELD]]`` — a Hugging Face dataset, streamed (``datasets.load_dataset(...,
    streaming=True)``): a hub id such as ``hf:roneneldan/TinyStories:validation``, or a local dataset
    directory (``hf:/data/tinystories:train``: parquet / JSON files, read offline).

Every format is streamed: a story at a time, never the whole corpus in memory.

Files are decoded strictly as UTF-8 (a BOM is dropped) unless another encoding is asked for (the
``encoding`` argument, or :func:`using_encoding` around a whole command: the CLI's ``--encoding``).
:func:`check_corpus` validates a file before any work starts: it decodes every byte (naming the byte offset
of the first one that is not valid in the encoding), refuses binary content (NUL bytes or many control
characters) and requires at least one story.

BOS policy: TinyStories models were trained on stories separated by token 50256, so every sequence we
feed starts with the tokenizer's ``bos_id`` (for GPT-2 BPE, 50256 = <|endoftext|>) followed by story
tokens. A story longer than ``max_len - 1`` tokens is cut into consecutive windows, each again
prefixed by BOS. Sequences are right-padded within a batch and ``mask`` says which positions are real;
with causal attention, padding never changes the activations at real positions.
"""

from __future__ import annotations

from .errors import CircuitbookError

import atexit
import codecs
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import re
import weakref
from pathlib import Path
from typing import Iterator

import torch

SEPARATOR = "<|endoftext|>"
# the encoding corpus files are read in when none is given (the CLI's --encoding sets it for one command)
ENCODING: contextvars.ContextVar[str] = contextvars.ContextVar("corpus_encoding", default="utf-8")
BINARY_CONTROL_SHARE = 0.01  # more control characters than this (besides tab/newline/CR/FF) reads as binary


class CorpusError(CircuitbookError, ValueError):
    """The corpus cannot be read or holds no stories."""


PARQUET_BATCH = 1024  # rows per record batch read from a parquet file (bounds memory)
TEXT_FIELDS = ("text", "story")  # the column / key a story is read from, first present wins


def _guess_format(path: Path, encoding: str = "utf-8") -> str:
    if path.suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    with open(path, encoding=_codec(encoding), errors="replace") as f:
        head = f.read(1 << 20)
    return "tinystories" if SEPARATOR in head else "text"


def _codec(encoding: str) -> str:
    """Python's codec name for ``encoding``; UTF-8 is read as utf-8-sig (drops a BOM)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CorpusError(f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return "utf-8-sig" if name in ("utf-8", "utf-8-sig") else name


@contextlib.contextmanager
def using_encoding(encoding: str | None):
    """Read corpus files in ``encoding`` inside the block (None: keep the current one)."""
    if encoding is None:
        yield
        return
    _codec(encoding)
    token = ENCODING.set(encoding)
    try:
        yield
    finally:
        ENCODING.reset(token)


def _first_bad_byte(path: Path, codec: str) -> tuple[int, str] | None:
    """(byte offset, reason) of the first byte that does not decode, or None when the whole file does."""
    dec = codecs.getincrementaldecoder(codec)("strict")
    offset = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            pending = len(dec.getstate()[0])
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                return offset - pending + e.start, e.reason
            offset += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as e:
            return offset - len(e.object) + e.start, e.reason
    return None


_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # control characters that text does not hold


def _looks_binary(path: Path, codec: str) -> str | None:
    """Why the file looks binary (NUL bytes, many control characters in its first MiB), or None."""
    if not codec.startswith(("utf-16", "utf-32")):  # there NUL bytes are part of the text
        with open(path, "rb") as f:
            for n, chunk in enumerate(iter(lambda: f.read(1 << 20), b"")):
                at = chunk.find(b"\x00")
                if at >= 0:
                    return f"it holds NUL bytes (the first at byte offset {n * (1 << 20) + at:,})"
    with open(path, encoding=codec, errors="replace") as f:
        head = f.read(1 << 20)
    ctrl = len(_CONTROL.findall(head))
    if head and ctrl > BINARY_CONTROL_SHARE * len(head):
        return f"{ctrl:,} of its first {len(head):,} characters are control characters"
    return None


def _text_file(source: str | Path, encoding: str | None) -> tuple[Path, str, str]:
    """(path, encoding name, codec) of a local corpus file; CorpusError if it is not a file."""
    path = Path(source)
    if not path.is_file():
        raise CorpusError(f"corpus {path} does not exist or is not a file")
    enc = encoding or ENCODING.get()
    return path, enc, _codec(enc)


def check_corpus(source: str | Path, fmt: str | None = None, encoding: str | None = None, min_stories: int = 1) -> None:
    """Refuse a corpus that cannot be read as text stories, before anything is created (see module doc).

    hf: datasets are checked only for the ``datasets`` package (reading one means downloading it)."""
    src = str(source)
    if src.startswith("hf:"):
        name, _, _ = _hf_spec(src)
        if _local_dataset(name) and not Path(name).expanduser().is_dir():
            raise CorpusError(f"corpus {src!r}: {name} is not a dataset directory")
        return
    if (fmt or "") == "parquet" or (fmt is None and Path(src).suffix == ".parquet"):
        _text_file(source, encoding)
        n = sum(1 for _ in zip(range(min_stories), _parquet_stories(Path(src))))
        if n < min_stories:
            raise CorpusError(f"corpus {src} holds {'no' if n == 0 else f'only {n}'} "
                              f"stor{'y' if n == 1 else 'ies'}" + (f" (need at least {min_stories})" if min_stories > 1 else ""))
        return
    path, enc, codec = _text_file(source, encoding)
    why = _looks_binary(path, codec)
    if why is not None:
        raise CorpusError(f"corpus {path} is not text: {why}")
    bad = _first_bad_byte(path, codec)
    if bad is not None:
        raise CorpusError(f"corpus {path} is not valid {enc}: byte offset {bad[0]:,} ({bad[1]}); "
                          f"pass --encoding (e.g. latin-1) if the file is in another encoding")
    n = 0
    for _ in read_stories(path, fmt, encoding=enc):
        n += 1
        if n >= min_stories:
            return
    raise CorpusError(f"corpus {path} holds {'no' if n == 0 else f'only {n}'} "
                      f"stor{'y' if n == 1 else 'ies'}" + (f" (need at least {min_stories})" if min_stories > 1 else ""))


def read_stories(source: str | Path, fmt: str | None = None, encoding: str | None = None) -> Iterator[str]:
    """Yield stories (stripped, non-empty) one at a time; never holds the whole file in memory.

    ``encoding``: the file's text encoding (default: :data:`ENCODING`, UTF-8), decoded strictly."""
    src = str(source)
    if src.startswith("hf:"):
        yield from _hf_stories(src)
        return
    path, enc, codec = _text_file(source, encoding)
    try:
        yield from _read_file(path, fmt or _guess_format(path, enc), codec)
    except UnicodeDecodeError:
        offset, reason = _first_bad_byte(path, codec) or (-1, "")
        raise CorpusError(f"corpus {path} is not valid {enc}: byte offset {offset:,} ({reason}); "
                          f"pass --encoding (e.g. latin-1) if the file is in another encoding") from None


def _parquet_stories(path: Path) -> Iterator[str]:
    """The stories of a parquet file's text column, one record batch (PARQUET_BATCH rows) in memory at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError("parquet corpora need the 'pyarrow' package: pip install 'circuitbook[datasets]'") from None
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"corpus {path} is not a readable parquet file: {str(e).splitlines()[0]}") from None
    names = f.schema_arrow.names
    field = next((n for n in TEXT_FIELDS if n in names), None)
    if field is None:
        raise CorpusError(f"corpus {path}: no {' or '.join(repr(n) for n in TEXT_FIELDS)} column "
                          f"(columns: {', '.join(names[:10])})")
    if not pa.types.is_string(f.schema_arrow.field(field).type) and not pa.types.is_large_string(
            f.schema_arrow.field(field).type):
        raise CorpusError(f"corpus {path}: column {field!r} holds {f.schema_arrow.field(field).type}, not strings")
    try:
        for batch in f.iter_batches(batch_size=PARQUET_BATCH, columns=[field]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text.strip()
    except pa.ArrowException as e:
        raise CorpusError(f"corpus {path} is not a readable parquet file: {str(e).splitlines()[0]}") from None


def _read_file(path: Path, fmt: str, codec: str) -> Iterator[str]:
    if fmt == "parquet":
        yield from _parquet_stories(path)
        return
    if fmt == "jsonl":
        with open(path, encoding=codec) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                text = next((obj[k] for k in TEXT_FIELDS if k in obj), None) if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise CorpusError(f"{path}:{n}: expected an object with a 'text' or 'story' string field")
                if text.strip():
                    yield text.strip()
        return
    if fmt not in ("tinystories", "text"):
        raise CorpusError(f"unknown corpus format {fmt!r} (tinystories, text, jsonl, parquet, hf:NAME)")
    buf: list[str] = []
    with open(path, encoding=codec) as f:  # utf-8-sig drops the BOM
        for line in f:
            boundary = line.strip() == SEPARATOR if fmt == "tinystories" else not line.strip()
            if boundary:
                story = "".join(buf).strip()
                if story:
                    yield story
                buf = []
            else:
                buf.append(line)
    story = "".join(buf).strip()
    if story:
        yield story


def _hf_spec(spec: str) -> tuple[str, str, str]:
    """(name or local directory, split, field) of ``hf:NAME[:SPLIT[:FIELD]]``."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise CorpusError(f"corpus {spec!r}: expected hf:NAME[:SPLIT[:FIELD]]")
    return parts[0], (parts[1] if len(parts) > 1 and parts[1] else "train"), (parts[2] if len(parts) > 2 and parts[2] else "text")


def _local_dataset(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


_OPEN_STREAMS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _close_streams() -> None:
    """Close dataset streams a reader left unfinished (a scan that stopped at --max-tokens) while the
    interpreter is still whole: closed during its teardown, ``datasets``' parquet reader aborts the process."""
    for it in list(_OPEN_STREAMS):
        with contextlib.suppress(Exception):
            it.close()


def _hf_stories(spec: str) -> Iterator[str]:
    name, split, field = _hf_spec(spec)
    try:
        import datasets
    except ImportError:
        raise CorpusError("hf: corpora need the 'datasets' package: pip install 'circuitbook[datasets]'") from None
    where = str(Path(name).expanduser()) if _local_dataset(name) else name
    try:
        rows = iter(datasets.load_dataset(where, split=split, streaming=True))
    except Exception as e:  # the hub unreachable, no such dataset or split, unreadable files: one clear line
        raise _hf_error(spec, split, where, e) from None
    if hasattr(rows, "close"):
        _OPEN_STREAMS.add(rows)
    try:
        for n, r in enumerate(rows):
            if n == 0 and field not in r:
                raise CorpusError(f"corpus {spec!r}: no field {field!r} (fields: {', '.join(list(r)[:10])}); "
                                  f"name it as hf:NAME:SPLIT:FIELD")
            text = r.get(field)
            if isinstance(text, str) and text.strip():
                yield text.strip()
    except CorpusError:
        raise
    except Exception as e:
        raise _hf_error(spec, split, where, e) from None
    finally:
        if hasattr(rows, "close"):
            rows.close()


def _hf_error(spec: str, split: str, where: str, e: Exception) -> CorpusError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CorpusError(f"corpus {spec!r}: cannot stream split {split!r} of {where}: {msg}")


def corpus_hash(source: str | Path) -> str:
    """sha256 of the corpus file's bytes (or of the dataset spec for hf: corpora)."""
    src = str(source)
    if src.startswith("hf:"):
        return "hf-" + hashlib.sha256(src.encode()).hexdigest()[:16]
    if not Path(source).is_file():
        raise CorpusError(f"corpus {source} does not exist or is not a file")
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclasses.dataclass
class Batch:
    """A right-padded batch of sequences.

    tokens [batch, pos] int64 (BOS first), mask [batch, pos] bool (True on real tokens),
    story [batch] index of the story in the corpus, window [batch] which max_len window of that story.
    Sequences are ordered by (story, window), the order they appear in the corpus.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    story: torch.Tensor
    window: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def sequences(stories, tokenizer, max_len: int = 512, bos_id: int | None = -1) -> Iterator[tuple[int, int, list[int]]]:
    """(story index, window index, token ids) for every window of every story, BOS first."""
    bos = tokenizer.bos_id if bos_id == -1 else bos_id
    prefix = [bos] if bos is not None else []
    body = max_len - len(prefix)
    if body < 1:
        raise CorpusError(f"max_len {max_len} leaves no room for story tokens")
    for s, text in enumerate(stories):
        ids = tokenizer.encode(text)
        for w, start in enumerate(range(0, max(len(ids), 1), body)):
            chunk = ids[start:start + body]
            if chunk:
                yield s, w, prefix + chunk


def pad(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: (tokens [n, max_len] int64, mask [n, max_len] bool, True on real tokens)."""
    T = max(len(ids) for ids in seqs)
    toks = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, ids in enumerate(seqs):
        toks[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = True
    return toks, mask


def batches(stories, tokenizer, max_len: int = 512, batch_size: int = 8, pad_id: int = 0,
            bos_id: int | None = -1) -> Iterator[Batch]:
    """Group :func:`sequences` into right-padded batches, in corpus order."""
    pending: list[tuple[int, int, list[int]]] = []

    def flush():
        toks, mask = pad([ids for _, _, ids in pending], pad_id)
        return Batch(toks, mask, torch.tensor([s for s, _, _ in pending]), torch.tensor([w for _, w, _ in pending]))

    for item in sequences(stories, tokenizer, max_len, bos_id):
        pending.append(item)
        if len(pending) == batch_size:
            yield flush()
            pending = []
    if pending:
        yield flush()


def story_hashes(stories) -> list[str]:
    """A short sha256 of each story's text (stripped), in order: which stories a stage used, without the text.

    The scan records these for the stories it read (book meta ``scan_stories``), so that a later stage
    scoring explanations can refuse "held-out" stories the explanations were made from."""
    return [hashlib.sha256(s.strip().encode()).hexdigest()[:16] for s in stories]
