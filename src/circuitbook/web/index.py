"""The index's rows: one per neuron and head, with what each component knows about it in summary.

``index_rows(book)`` reads the core ``units`` table (label, notes, status) and asks each stage's
bulk query for its one-line summary (type, class, key stats, top tokens) when that stage's component
is present in the book; a book with only labels still gives a full index. ``filter_rows`` applies the
index page's filters (the same ones the page's JavaScript applies in the static export).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..book import Book
from ..units import kind_names, sort_key, unit_key


@dataclasses.dataclass
class Row:
    """One unit in the index. ``stats`` maps a short column name to a number (ordering: as inserted)."""

    kind: str
    layer: int
    idx: int
    label: str = ""
    notes: str = ""
    status: str = "none"
    type: str = ""
    cls: str = ""
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    top_tokens: list[str] = dataclasses.field(default_factory=list)  # tokens it fires on most (scan)
    promotes: list[str] = dataclasses.field(default_factory=list)  # tokens it promotes most (circuits)

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.layer, self.idx)

    @property
    def search_text(self) -> str:
        """What text search matches against: key, label, notes, type, class and top tokens (lowercase)."""
        return " ".join([self.key, self.label, self.notes, self.type, self.cls, *self.top_tokens,
                         *self.promotes]).lower()


def index_rows(book: Book) -> list[Row]:
    """Every unit of the bound model (neurons then heads, by layer and index), or only the units the
    book has rows for when it is not bound to a model yet."""
    have = book.unit_labels()
    if book.config is not None:
        keys = list(book.units())
    else:
        keys = sorted((k for k in have if k[0] in kind_names()), key=lambda k: sort_key(*k))
    rows = {}
    for k in keys:
        r = have.get(k)
        rows[k] = Row(*k, *(r if r else ()))
    for summary in _component_summaries(book):
        for k, s in summary.items():
            row = rows.get(k)
            if row is None:
                continue
            row.type = s.get("type", row.type) or row.type
            row.cls = s.get("cls", row.cls) or row.cls
            row.stats.update(s.get("stats", {}))
            row.top_tokens += s.get("top_tokens", [])
            row.promotes += s.get("promotes", [])
    return list(rows.values())


def _circuits_summary(book: Book) -> dict:
    """Heads: copying / previous-token / induction scores; neurons: the tokens they promote most."""
    from ..book import circuits as c

    out: dict[tuple[str, int, int], dict] = {}
    names = {"ov_copying": "copying", "previous_token": "prev-tok", "induction": "induction"}
    for (l, h), sc in c.head_scores(book).items():
        out[("head", l, h)] = {"stats": {short: sc[n] for n, short in names.items() if sc.get(n) is not None}}
    cfg = book.config
    if cfg is not None:
        for l in range(cfg["n_layers"]):
            for i in range(cfg["d_mlp"]):
                e = c.stored_neuron_output_effect(book, l, i, k=5)
                if e is not None:
                    out[("neuron", l, i)] = {"promotes": e.top.strs}
    return out


def _scan_summary(book: Book) -> dict:
    """Neurons: max activation, fire rate and their top tokens by mean activation; heads: attention to
    BOS / previous token and entropy (the scan's own bulk query ``unit_table`` and ``token_means``)."""
    from ..book import scan as s

    out: dict[tuple[str, int, int], dict] = {}
    for r in s.unit_table(book, "neuron"):
        l, i = r["layer"], r["idx"]
        stats = {k: r[v] for k, v in (("max", "max"), ("fire %", "fire_rate")) if r[v] is not None}
        if "fire %" in stats:
            stats["fire %"] *= 100
        out[("neuron", l, i)] = {"stats": stats, "top_tokens": [t.token for t in s.token_means(book, l, i, k=5)]}
    for r in s.unit_table(book, "head"):
        out[("head", r["layer"], r["idx"])] = {"stats": {k: r[k] for k in ("bos", "prev", "entropy")
                                                         if r[k] is not None}}
    return out


def _typing_summary(book: Book) -> dict:
    """Neurons: their type (syntax / content / mixed / unclear) and rule ("PRON -> VERB") as the class."""
    from ..book import roles as t

    return {("neuron", r["layer"], r["idx"]): {"type": r["type"], "cls": r["rule"]} for r in t.unit_types(book)}


# component name -> fn(book) -> {(kind, layer, idx): {"type", "cls", "stats", "top_tokens", "promotes"}}
SUMMARIES = {"scan": _scan_summary, "circuits": _circuits_summary, "typing": _typing_summary}


_CACHE: dict[str, tuple[tuple, list[dict]]] = {}


def _component_summaries(book: Book) -> list[dict]:
    """The summaries, recomputed only when a stage wrote to the book since the last call."""
    sig = book.results_fingerprint()  # label edits leave it as it is: editing never forces a recompute
    hit = _CACHE.get(str(book.path))
    if hit is not None and hit[0] == sig:
        return hit[1]
    present = book.schema_versions()
    out = [fn(book) for name, fn in SUMMARIES.items() if name in present]
    _CACHE[str(book.path)] = (sig, out)
    return out


LABEL_FILTERS = ("any", "labelled", "unlabelled", "hypothesis", "supported", "refuted", "confirmed")


def filter_rows(rows: list[Row], q: str = "", kind: str = "", layer: int | None = None, type: str = "",
                cls: str = "", label: str = "any") -> list[Row]:
    """Rows matching every given filter. ``q``: whitespace-separated words, each must occur in the
    row's search text; ``label``: one of LABEL_FILTERS (a status filters on hypothesis status)."""
    words = q.lower().split()
    out = []
    for r in rows:
        if kind and r.kind != kind or layer is not None and r.layer != layer:
            continue
        if type and r.type != type or cls and r.cls != cls:
            continue
        if label == "labelled" and not r.label or label == "unlabelled" and r.label:
            continue
        if label not in ("any", "labelled", "unlabelled", "") and r.status != label:
            continue
        if words:
            text = r.search_text
            if not all(w in text for w in words):
                continue
        out.append(r)
    return out
