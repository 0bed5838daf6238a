"""The handcraft spec: an explanation written down precisely enough to become weights.

A spec is a YAML (or JSON) file, or the same dataclasses built in Python. The format reference with an
example is ``docs/handcraft-spec.md``. In short::

    name: pronouns-and-articles
    classes: {pronoun: [he, she, they, He, She, They]}      # optional: words, or {ids: [...]}
    mlp: keep            # keep | replace  (replace: every neuron not in the spec is ablated)
    attention: keep      # keep | replace  (replace: every head not in the spec is ablated)
    ablate: mean         # zero | mean: how removed units are ablated (here and in the baselines)
    direct: keep         # keep | bigram | {bigram: {smoothing: 0.5, min_count: 1}}
    neurons:
      - {name: pron->verb, replaces: 896, input: {class: pronoun}, output: {promote: {class: VERB}}}
    heads:
      - {name: prev, head: 3, attend: previous, ov: copy}

Token sets (``TokenSet``) are written ``{class: NAME}``, ``{words: [...]}`` (each word is tokenized with
and without a leading space; only single-token spellings count), ``{ids: [...]}``, or a bare list of
words. Directions (``Direction``) are ``{direction: {neuron: IDX}}`` (that neuron's own W_in column on
the input side, W_out row on the output side), ``{direction: {feature: {dictionary: NAME, idx: I}}}`` (that
dictionary feature's encoder column W_enc[:, I] on the input side, with b_enc[I] as the bias when ``bias:
keep``; its decoder row W_dec[I] on the output side), ``{direction: {values: [...]}}`` or
``{direction: {file: path.npy|.pt}}``.

Dictionary features (``FeatureRef``, ``{feature: {dictionary: NAME, idx: I}}``): a neuron entry may
``replaces: {feature: {dictionary: NAME, idx: I}}``. The handcrafted model then has the MLP of that
dictionary's layer replaced by the dictionary (spliced), with that feature's activation replaced by the
handcrafted unit's (:mod:`circuitbook.handcraft.features`); ``dictionary_error: keep | drop`` (default
keep) says whether the dictionary's error term (MLP output minus reconstruction) is added back. The
dictionaries themselves come from the book (``circuitbook handcraft --book``) or ``build(dictionaries=...)``.

Every parse error names the file, the line and the field: ``spec.yaml:12: neurons[0].input: ...``.

This module is the schema (the dataclasses and their ``to_dict`` / ``to_yaml``); reading YAML/JSON with
line numbers is :mod:`circuitbook.handcraft.parse` (``load_spec``, ``parse_spec``, ``spec_from_json``);
writing a spec from the book's labels is :mod:`circuitbook.handcraft.export` (``export_spec``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from ..errors import CircuitbookError


class SpecError(CircuitbookError, ValueError):
    """A spec that cannot be read or built: the message names the file, line and field."""


# --------------------------------------------------------------------------- dataclasses
@dataclasses.dataclass
class TokenSet:
    """A set of tokens, resolved against a tokenizer and a class table at build time.

    Exactly one of ``cls`` (a class name), ``words`` (strings) or ``ids`` (token ids) is set.
    ``where`` is the spec location used in error messages.
    """

    cls: str | None = None
    words: list[str] | None = None
    ids: list[int] | None = None
    where: str = ""

    def describe(self) -> str:
        if self.cls is not None:
            return f"class {self.cls}"
        if self.words is not None:
            return "words " + ", ".join(self.words[:6]) + ("..." if len(self.words) > 6 else "")
        return f"{len(self.ids or [])} token ids"


@dataclasses.dataclass
class FeatureRef:
    """Feature ``idx`` of the dictionary called ``dictionary`` (unit ``feature/<its number>/<idx>``)."""

    dictionary: str
    idx: int
    where: str = ""

    def describe(self) -> str:
        return f"feature {self.idx} of dictionary {self.dictionary!r}"


@dataclasses.dataclass
class Direction:
    """A fixed vector in the residual basis [d_model]: one of ``neuron`` (reuse that neuron's own
    W_in column or W_out row, exactly), ``feature`` (a dictionary feature's W_enc column or W_dec row,
    exactly), ``values`` (d_model floats) or ``file`` (.npy/.pt holding one)."""

    neuron: int | None = None
    feature: FeatureRef | None = None
    values: list[float] | None = None
    file: str | None = None
    where: str = ""


@dataclasses.dataclass
class OutputRule:
    """What a unit writes: promote / suppress token sets (through the unembedding), or a raw direction."""

    promote: TokenSet | None = None
    suppress: TokenSet | None = None
    direction: Direction | None = None
    where: str = ""


@dataclasses.dataclass
class NeuronSpec:
    """One handcrafted MLP neuron.

    input: TokenSet (fires when the current token is in it) or Direction (W_in column, used as given
    times ``strength``). output: OutputRule. ``strength``: for token-set inputs, the pre-activation gap
    between on-set and off-set positions (on average); for directions, a multiplier. ``gain``: for
    token-set outputs, how many logits the promoted tokens gain (over the vocabulary average) per unit of
    activation; for directions, a multiplier. ``bias``: the pre-activation at off-set positions (token-set
    input) or b_in itself (direction input); "keep" keeps the replaced unit's bias (a neuron's b_in, a
    feature's b_enc), or for a feature-direction input that feature's b_enc.
    ``strength: keep`` / ``gain: keep`` copy the replaced neuron's own on-set gap / logit gain on these sets.
    ``replaces``: the existing neuron index it takes over, or a :class:`FeatureRef` (the unit takes over that
    dictionary feature's activation; ``layer`` None means the dictionary's layer); None adds a new neuron
    (d_mlp grows).
    ``fit``: how token-set readers are fitted: "ridge" (ridge regression of the in-set indicator on
    what the neuron reads, on- and off-set positions weighted equally; default, the most selective), "mean"
    (mean difference, every set token weighted equally) or "lda" (mean difference whitened by the
    covariance; favours rare set tokens). ``out_fit``: "pinv" (least squares through the
    W_U pseudo-inverse onto +1 promote / -1 suppress; default) or "unembed" (mean of the target
    unembedding columns, which also drags along their shared frequency direction).
    """

    input: TokenSet | Direction
    output: OutputRule
    name: str = ""
    layer: int | None = 0
    replaces: int | FeatureRef | None = None
    strength: float | str | None = None  # None: 4.0 for token-set inputs, 1.0 for directions; "keep"
    gain: float | str | None = None  # None: 1.0; "keep": the replaced neuron's own gain
    bias: float | str = 0.0
    fit: str = "ridge"
    out_fit: str = "pinv"
    where: str = ""


@dataclasses.dataclass
class ClassMap:
    """An OV entry: when the head attends to a token of ``src``, promote ``dst`` (optionally suppress)."""

    src: TokenSet
    dst: OutputRule
    where: str = ""


@dataclasses.dataclass
class HeadSpec:
    """One handcrafted attention head, replacing head ``head`` of layer ``layer``.

    attend: "previous" (the token just before), "same_token" (earlier copies of the current token,
    itself included), "bos" (the first position) or a TokenSet (tokens of that set, anywhere before).
    ov: "copy" (raise the logit of the attended token; rank-limited by d_head), a TokenSet (copy only
    tokens of that set), or a list of ClassMap (attending a token of src promotes dst).
    ``strength``: attention score gap for the attended positions. ``gain``: logits per unit attention.
    """

    head: int
    attend: str | TokenSet
    ov: str | TokenSet | list[ClassMap]
    name: str = ""
    layer: int = 0
    strength: float = 12.0
    gain: float = 2.0
    where: str = ""


@dataclasses.dataclass
class DirectSpec:
    """The direct path (embedding -> unembedding). mode "keep" leaves W_E alone; "bigram" re-fits W_E
    so that each token's embedding alone predicts the smoothed bigram distribution
    P(b|a) = (c_ab + smoothing) / (c_a + smoothing * V) estimated on the corpus (tokens seen fewer than
    ``min_count`` times keep their embedding)."""

    mode: str = "keep"
    smoothing: float = 0.5
    min_count: int = 1
    where: str = ""


@dataclasses.dataclass
class Spec:
    """A whole handcrafted explanation. ``classes`` maps class name -> TokenSet (overrides the book's
    token classes). ``source`` is where it was read from; ``text`` its original text (stored in the book)."""

    name: str = "spec"
    description: str = ""
    classes: dict[str, TokenSet] = dataclasses.field(default_factory=dict)
    neurons: list[NeuronSpec] = dataclasses.field(default_factory=list)
    heads: list[HeadSpec] = dataclasses.field(default_factory=list)
    direct: DirectSpec = dataclasses.field(default_factory=DirectSpec)
    mlp: str = "keep"
    attention: str = "keep"
    ablate: str = "mean"
    dictionary_error: str = "keep"  # keep | drop: the dictionary's error term, when a spec replaces features
    source: str = "<python>"
    text: str = ""

    def to_dict(self) -> dict:
        return _plain(self)

    def feature_refs(self) -> list[FeatureRef]:
        """Every dictionary feature the spec names (replaced, or read / written as a direction)."""
        out = []
        for n in self.neurons:
            if isinstance(n.replaces, FeatureRef):
                out.append(n.replaces)
            out += [d.feature for d in (n.input, n.output.direction) if isinstance(d, Direction) and d.feature]
        return out

    def dictionary_names(self) -> list[str]:
        """The dictionaries the spec needs, in order of first mention."""
        return list(dict.fromkeys(r.dictionary for r in self.feature_refs()))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(obj: Any) -> Any:
    """Dataclass -> the YAML-shaped dict it came from (defaults and locations dropped)."""
    if isinstance(obj, TokenSet):
        return {"class": obj.cls} if obj.cls is not None else {"words": list(obj.words)} if obj.words is not None \
            else {"ids": list(obj.ids or [])}
    if isinstance(obj, FeatureRef):
        return {"feature": {"dictionary": obj.dictionary, "idx": obj.idx}}
    if isinstance(obj, Direction):
        if obj.feature is not None:
            return {"direction": _plain(obj.feature)}
        d = {k: _plain(getattr(obj, k)) for k in ("neuron", "values", "file") if getattr(obj, k) is not None}
        return {"direction": d}
    if isinstance(obj, OutputRule):
        if obj.direction is not None:
            return _plain(obj.direction)
        return {k: _plain(getattr(obj, k)) for k in ("promote", "suppress") if getattr(obj, k) is not None}
    if isinstance(obj, ClassMap):
        return {"from": _plain(obj.src), "to": _plain(obj.dst)}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, str):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name in ("where", "source", "text"):
                continue
            v = getattr(obj, f.name)
            if isinstance(obj, Spec) and f.name in ("classes", "neurons", "heads") and not v:
                continue
            if isinstance(obj, Spec) and f.name == "dictionary_error" and not obj.feature_refs():
                continue
            if isinstance(obj, DirectSpec):
                return obj.mode if obj.mode == "keep" else {obj.mode: {"smoothing": obj.smoothing,
                                                                       "min_count": obj.min_count}}
            if isinstance(obj, HeadSpec) and f.name == "ov" and not isinstance(v, str):
                out["ov"] = {"map": _plain(v)} if isinstance(v, list) else {"copy": _plain(v)}
            elif v is not None:
                out[f.name] = _plain(v)
        return out
    return obj
