"""The prompt page: per-position predictions, the attribution graph for one output token, ablations.

Everything here is a thin call into ``circuitbook.graph`` (``predict``, ``attribute``, ``ablate``,
``to_json``, ``to_svg``); the page adds the book's labels to the graph's nodes (``labels=book.labelled()``),
links each node to its unit page and lets the user tick nodes to ablate together (a plain GET form, so
every state of the page is a shareable URL).

Query parameters (all optional but ``text``):
    text        the prompt (BOS is prepended, as in training)
    target      the output token as text (one token, e.g. " was"); target_id: the same as a token id;
                neither: the model's top prediction at ``pos``
    pos         the position whose next-token logit is explained (default -1: the last)
    nodes       max graph nodes kept (default 40), edges: max edges (default 150)
    ablate      node ids to knock out together (repeatable), mode: "zero" | "mean"
    features    a transcoder of the book (name or number): its features and one error node per position
                replace its layer's neurons in the graph (``circuitbook.dictionary.graph``)
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

from ..errors import CircuitbookError

MAX_TEXT = 4000


@dataclasses.dataclass
class PromptQuery:
    text: str = ""
    target: str = ""
    target_id: int | None = None
    pos: int = -1
    nodes: int = 40
    edges: int = 150
    ablate: tuple[str, ...] = ()
    mode: str = "zero"
    features: str = ""

    def check(self) -> None:
        if len(self.text) > MAX_TEXT:
            raise CircuitbookError(f"the prompt is {len(self.text)} characters long; the limit is {MAX_TEXT}")
        if not 1 <= self.nodes <= 500:
            raise CircuitbookError(f"nodes must be in 1..500, not {self.nodes}")
        if not 1 <= self.edges <= 5000:
            raise CircuitbookError(f"edges must be in 1..5000, not {self.edges}")
        if self.mode not in ("zero", "mean"):
            raise CircuitbookError(f"mode must be 'zero' or 'mean', not {self.mode!r}")
        if len(self.ablate) > 64:
            raise CircuitbookError("at most 64 nodes can be ablated at once")

    @property
    def target_arg(self) -> int | str | None:
        if self.target_id is not None:
            return self.target_id
        return self.target if self.target != "" else None

    def params(self, **override) -> list[tuple[str, str]]:
        """URL query for this state (with overrides), for links and export buttons."""
        d = dataclasses.asdict(self) | override
        out = [("text", d["text"])]
        if d["target_id"] is not None:
            out.append(("target_id", str(d["target_id"])))
        elif d["target"]:
            out.append(("target", d["target"]))
        out += [("pos", str(d["pos"])), ("nodes", str(d["nodes"])), ("edges", str(d["edges"]))]
        out += [("ablate", a) for a in d["ablate"]] + ([("mode", d["mode"])] if d["ablate"] else [])
        if d["features"]:
            out.append(("features", d["features"]))
        return out


class PromptRunner:
    """Runs the graph stage for the server: one forward at a time, the last few graphs cached (the
    page, then its JSON and SVG exports, ask for the same graph)."""

    def __init__(self, model, book):
        self.model = model
        self.book = book
        self.lock = threading.Lock()
        self._cache: OrderedDict[Any, Any] = OrderedDict()

    def _labels(self) -> dict[tuple[str, int, int], str]:
        return {(u.kind, u.layer, u.idx): u.label for u in self.book.labelled()}

    def transcoders(self, q: PromptQuery):
        """The transcoder ``q.features`` names (None without one), loaded from the book and checked against the model."""
        if not q.features.strip():
            return None
        from ..dictionary.graph import book_transcoders

        return book_transcoders(self.book, [q.features.strip()], self.model.cfg)

    def graph(self, q: PromptQuery):
        from ..graph import attribute

        labels = self._labels()
        key = (q.text, q.target_arg, q.pos, q.nodes, q.edges, q.features.strip(), tuple(sorted(labels.items())))
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            g = attribute(self.model, q.text, q.target_arg, pos=q.pos, max_nodes=q.nodes, max_edges=q.edges,
                          labels=labels, transcoders=self.transcoders(q))
            self._cache[key] = g
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
            return g

    def predictions(self, q: PromptQuery, k: int = 5):
        from ..graph import predict

        with self.lock:
            return predict(self.model, q.text, k=k)

    def ablation(self, q: PromptQuery, target: int, pos: int):
        from ..graph import ablate

        with self.lock:
            return ablate(self.model, q.text, list(q.ablate), target, pos=pos, mode=q.mode)
