"""The explain and score stages end to end: what ``circuitbook explain`` / ``circuitbook score`` call.

:func:`explain_book` proposes an explanation for every unit of every kind with an evidence reader
(``evidence.reader_for``: neurons, heads, any kind registered later with a reader or with
example windows in the scan tables) and appends them to the book
as author "auto" (never touching what people wrote; see ``book/explanations.py`` for precedence).
:func:`score_book` scores the explanation that counts for each unit (a person's label that parses
included, see ``labels.py``) on held-out stories and stores the scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

from tqdm.auto import tqdm

from ..book import Book
from ..book import explanations as be
from ..book import roles as br
from ..book import scan as bs
from ..corpus import story_hashes
from ..units import unit_kind
from .access import scorable
from .evidence import ActivationEvidence, output_effects, reader_for
from .labels import import_labels
from .program import ProgramError, program_from_dict
from .propose import ProposeSettings, propose_activation, propose_attention
from .score import ScoreError, ScoreResult, ScoreSettings, UnitScore, check_held_out, collect, score_units
from .simulate import Resolver

EXPLAIN_VERSION = 1


@dataclasses.dataclass
class ExplainSummary:
    n_units: int
    by_kind: dict
    n_rules: int  # explanations with at least one input clause (activation) / any (attention)
    seconds: float
    run_id: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {k}s" for k, n in self.by_kind.items())
        return (f"explained {self.n_units} units ({kinds}) in {self.seconds:.1f} s; {self.n_rules} with an "
                f"interpretable rule (run {self.run_id})")


def resolver_for(book: Book) -> Resolver:
    cfg = book.config or {}
    return Resolver(book.token_strs(), br.class_tokens(book), cfg.get("d_vocab") or len(book.token_strs()))


def explain_book(book: Book, model=None, settings: ProposeSettings | None = None, kinds: list[str] | None = None,
                 progress: bool = False) -> ExplainSummary:
    """Propose and store an "auto" explanation for every unit (of ``kinds``, default all with evidence)."""
    st = settings or ProposeSettings()
    if bs.scan_info(book) is None:
        raise ScoreError(f"{book.path} has no scan: run `circuitbook scan` first (explanations come from its evidence)")
    t0 = time.time()
    classes = br.class_tokens(book)
    strs = book.token_strs()
    scan = bs.scan_info(book)
    run_id = book.start_run("explain", {"settings": dataclasses.asdict(st), "with_model": model is not None})
    prov0 = {"stage": "explain", "version": EXPLAIN_VERSION, "run": run_id, "scan_corpus": scan["identity"].get("corpus"),
             "scan_stories": len(book.get_meta("scan_stories") or []) or None,
             "effects": "weights" if model is not None else "circuits"}
    rows, by_kind, n_rules = [], {}, 0
    units = [u for u in book.units() if reader_for(u[0]) is not None and (kinds is None or u[0] in kinds)]
    effects: dict = {}
    if model is not None:
        for kind, layer in sorted({(k, l) for k, l, _ in units}):
            if unit_kind(kind).stats == "activation":
                idxs = [i for k, l, i in units if (k, l) == (kind, layer)]
                for i, e in output_effects(model.weights, kind, layer, idxs).items():
                    effects[(kind, layer, i)] = e
    for kind, layer, idx in tqdm(units, desc="explain", unit="unit", disable=not progress):
        ev = reader_for(kind)(book, layer, idx)
        if ev is None:
            continue
        if isinstance(ev, ActivationEvidence):
            p = propose_activation(ev, classes, strs, st, effects.get((kind, layer, idx)))
            n_rules += bool(p.program.clauses)
        else:
            p = propose_attention(ev, classes, strs, st)
            n_rules += 1
        prov = {**prov0, "fit": p.fit, "example_stories": len(ev.stories)}
        rows.append((kind, layer, idx, "auto", p.sentence, p.program.to_dict(), prov))
        by_kind[kind] = by_kind.get(kind, 0) + 1
    be.add_explanations(book, rows)
    s = ExplainSummary(len(rows), by_kind, n_rules, time.time() - t0, run_id)
    book.finish_run(run_id, dataclasses.asdict(s))
    return s


def scoring_items(book: Book, kinds: list[str] | None = None, authors: list[str] | None = None) -> list[tuple]:
    """(kind, layer, idx, explanation id, author, program) of every current explanation with a program, of
    the kinds the scorer can read (``access.scorable``: not yet dictionary features); asking for a kind it
    cannot read is a ScoreError."""
    for k in kinds or ():
        if not scorable(k):
            raise ScoreError(f"--kind {k}: the scorer cannot read the activations of {k} units yet "
                             f"(explanations of them are stored, not scored)")
    items = []
    for (kind, layer, idx), e in sorted(be.current(book).items()):
        if e["program"] is None or (kinds and kind not in kinds) or (authors and e["author"] not in authors):
            continue
        if not scorable(kind):
            continue
        try:
            prog = program_from_dict(e["program"], f"explanation {e['id']}")
        except ProgramError:
            continue
        items.append((kind, layer, idx, e["id"], e["author"], prog))
    return items


def score_key(fingerprint: str | None, corpus: str | None, stories: list[str], st: ScoreSettings,
              kinds: list[str] | None, eids: list[int]) -> str:
    """What names a score run for resuming (book/explanations.py's journal): a digest of the model, the corpus
    and its stories, the settings, the kinds and the explanations scored."""
    ident = {"model": fingerprint, "corpus": corpus, "stories": story_hashes(stories), "kinds": sorted(kinds or []),
             "settings": dataclasses.asdict(st), "explanations": eids}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def score_book(book: Book, model, stories: list[str], settings: ScoreSettings | None = None,
               kinds: list[str] | None = None, corpus: str | None = None, progress: bool = False,
               checkpoint_every: int = 64) -> ScoreResult:
    """Score every current explanation on held-out ``stories`` and store the scores (one score run).

    Resumable: finished scores are journaled in the book every ``checkpoint_every`` units (whole fast-path
    chunks); a killed run re-run with the same arguments scores only what is left and stores the same run an
    uninterrupted one stores (the journal is emptied in the transaction that stores it)."""
    st = settings or ScoreSettings()
    held = check_held_out(book, stories)
    import_labels(book)
    items = scoring_items(book, kinds)
    if not items:
        raise ScoreError(f"{book.path} has no explanations with a program to score: run `circuitbook explain` first")
    R = resolver_for(book)
    key = score_key(model.fingerprint(), corpus, stories, st, kinds, [it[3] for it in items])
    done = {eid: UnitScore(**row) for eid, row in be.journal_scores(book, key).items()}
    ho = collect(model, stories, {(k, l) for k, l, *_ in items}, st, progress)
    buf: list[dict] = []

    def record(scores) -> None:
        buf.extend(s.to_row() for s in scores)
        if len(buf) >= checkpoint_every:
            be.journal_add(book, key, buf)
            buf.clear()

    scores, extra, l_orig = score_units(model, ho, items, R, st, progress, done=done, record=record)
    res = ScoreResult(scores, ho.forwards + extra, ho.forwards, held, l_orig)
    summary = {"n": len(scores), "forwards": res.forwards, "batches": res.batches}
    if done:
        summary["resumed"] = len(done)
    be.store_score_run(book, {"settings": dataclasses.asdict(st), "corpus": corpus, "held_out": held},
                       [s.to_row() for s in scores], summary, key)
    return res
