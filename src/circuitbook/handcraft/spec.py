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
the input side, W_out row on the output side), ``{direction: {values: [...]}}`` or
``{direction: {file: path.npy|.pt}}``.

Every parse error names the file, the line and the field: ``spec.yaml:12: neurons[0].input: ...``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
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
class Direction:
    """A fixed vector in the residual basis [d_model]: one of ``neuron`` (reuse that neuron's own
    W_in column or W_out row, exactly), ``values`` (d_model floats) or ``file`` (.npy/.pt holding one)."""

    neuron: int | None = None
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
    input) or b_in itself (direction input); "keep" keeps the replaced neuron's b_in.
    ``strength: keep`` / ``gain: keep`` copy the replaced neuron's own on-set gap / logit gain on these sets.
    ``replaces``: the existing neuron index it takes over; None adds a new neuron (d_mlp grows).
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
    layer: int = 0
    replaces: int | None = None
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
    source: str = "<python>"
    text: str = ""

    def to_dict(self) -> dict:
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(obj: Any) -> Any:
    """Dataclass -> the YAML-shaped dict it came from (defaults and locations dropped)."""
    if isinstance(obj, TokenSet):
        return {"class": obj.cls} if obj.cls is not None else {"words": list(obj.words)} if obj.words is not None \
            else {"ids": list(obj.ids or [])}
    if isinstance(obj, Direction):
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
            if isinstance(obj, DirectSpec):
                return obj.mode if obj.mode == "keep" else {obj.mode: {"smoothing": obj.smoothing,
                                                                       "min_count": obj.min_count}}
            if isinstance(obj, HeadSpec) and f.name == "ov" and not isinstance(v, str):
                out["ov"] = {"map": _plain(v)} if isinstance(v, list) else {"copy": _plain(v)}
            elif v is not None:
                out[f.name] = _plain(v)
        return out
    return obj


# --------------------------------------------------------------------------- YAML with line numbers
class _Map(dict):
    line = 0
    lines: dict


class _Seq(list):
    line = 0
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader, node):
    loader.flatten_mapping(node)
    m = _Map()
    m.line, m.lines = node.start_mark.line + 1, {}
    for k_node, v_node in node.value:
        k = loader.construct_object(k_node, deep=True)
        m[k] = loader.construct_object(v_node, deep=True)
        m.lines[k] = v_node.start_mark.line + 1
    return m


def _construct_seq(loader, node):
    s = _Seq(loader.construct_object(n, deep=True) for n in node.value)
    s.line, s.lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
    return s


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class _P:
    """Parsing context: turns (field path, node) into located errors."""

    def __init__(self, source: str):
        self.source = source

    def at(self, node, path: str, line: int | None = None) -> str:
        line = line or getattr(node, "line", 0)
        return f"{self.source}:{line}: {path}" if line else f"{self.source}: {path}"

    def fail(self, node, path: str, msg: str, line: int | None = None):
        raise SpecError(f"{self.at(node, path, line)}: {msg}")

    def child(self, parent, key) -> int | None:
        lines = getattr(parent, "lines", None)
        if isinstance(lines, dict):
            return lines.get(key)
        if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
            return lines[key]
        return getattr(parent, "line", None)

    def keys(self, node, path: str, allowed: set[str], required: set[str] = frozenset()):
        if not isinstance(node, dict):
            self.fail(node, path, f"expected a mapping, got {_kind(node)}")
        extra = sorted(set(map(str, node)) - allowed)
        if extra:
            self.fail(node, f"{path}.{extra[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})",
                      self.child(node, extra[0]))
        for r in sorted(required):
            if r not in node:
                self.fail(node, path, f"missing required field {r!r}")

    def number(self, parent, key, path, default, kind=float, allow=()):
        if key not in parent:
            return default
        v = parent[key]
        if v in allow:
            return v
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            self.fail(parent, f"{path}.{key}", f"expected {'an integer' if kind is int else 'a number'}"
                      + (f" or {' / '.join(map(repr, allow))}" if allow else "") + f", got {v!r}",
                      self.child(parent, key))
        return kind(v)

    def choice(self, parent, key, path, default, options):
        v = parent.get(key, default)
        if v not in options:
            self.fail(parent, f"{path}.{key}", f"must be one of {', '.join(options)}, got {v!r}",
                      self.child(parent, key))
        return v


def _kind(x) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(x).__mro__[-2] if type(x) in (_Map, _Seq) else type(x), type(x).__name__)


def load_spec(path_or_text: str | Path, source: str | None = None) -> Spec:
    """Read a spec from a .yaml/.yml/.json file path, or from YAML text (``source`` names it in errors)."""
    text, src = str(path_or_text), source or "<spec>"
    if isinstance(path_or_text, Path) or ("\n" not in text and text.endswith((".yaml", ".yml", ".json"))):
        p = Path(path_or_text)
        if not p.is_file():
            raise SpecError(f"spec file {p} does not exist")
        text, src = p.read_text(), source or str(p)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark else src
        raise SpecError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    spec = parse_spec(data, src)
    spec.text = text
    return spec


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """A parsed YAML/JSON document (dicts and lists) -> Spec, validated."""
    P = _P(source)
    if data is None:
        raise SpecError(f"{source}: the spec is empty")
    P.keys(data, "spec", {"name", "description", "classes", "neurons", "heads", "direct", "mlp", "attention",
                          "ablate", "layer"})
    layer = P.number(data, "layer", "spec", 0, int)
    spec = Spec(name=str(data.get("name", "spec")), description=str(data.get("description", "")), source=source)
    spec.mlp = P.choice(data, "mlp", "spec", "keep", ("keep", "replace"))
    spec.attention = P.choice(data, "attention", "spec", "keep", ("keep", "replace"))
    spec.ablate = P.choice(data, "ablate", "spec", "mean", ("zero", "mean"))
    classes = data.get("classes") or {}
    if not isinstance(classes, dict):
        P.fail(data, "classes", f"expected a mapping of class name -> words or {{ids: [...]}}, got {_kind(classes)}",
               P.child(data, "classes"))
    for name, v in classes.items():
        path = f"classes.{name}"
        line = P.child(classes, name)
        if isinstance(v, dict) and "class" in v:
            P.fail(v, path, "a class must be defined by words or ids, not another class", line)
        spec.classes[str(name)] = _token_set(P, v, path, line)
    for i, n in enumerate(_list(P, data, "neurons")):
        spec.neurons.append(_neuron(P, n, f"neurons[{i}]", layer, P.child(data["neurons"], i)))
    for i, h in enumerate(_list(P, data, "heads")):
        spec.heads.append(_head(P, h, f"heads[{i}]", layer, P.child(data["heads"], i)))
    spec.direct = _direct(P, data)
    seen: dict[tuple, str] = {}
    for n in spec.neurons:
        if n.replaces is not None:
            k = ("neuron", n.layer, n.replaces)
            if k in seen:
                raise SpecError(f"{n.where}: neuron {n.layer}.{n.replaces} is already replaced by {seen[k]}")
            seen[k] = n.where
    for h in spec.heads:
        k = ("head", h.layer, h.head)
        if k in seen:
            raise SpecError(f"{h.where}: head {h.layer}.{h.head} is already replaced by {seen[k]}")
        seen[k] = h.where
    return spec


def _list(P, data, key):
    v = data.get(key) or []
    if not isinstance(v, list):
        P.fail(data, key, f"expected a list, got {_kind(v)}", P.child(data, key))
    return v


def _token_set(P: _P, v, path: str, line: int | None) -> TokenSet:
    where = P.at(v, path, line)
    if isinstance(v, list):
        v = {"words": v}
    if isinstance(v, str):
        return TokenSet(words=[v], where=where)
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in ("class", "words", "ids"):
        P.fail(v, path, f"expected a token set: {{class: NAME}}, {{words: [...]}}, {{ids: [...]}} or a list of "
                        f"words, got {v!r}", line)
    (k, x), = v.items()
    if k == "class":
        if not isinstance(x, str):
            P.fail(v, f"{path}.class", f"expected a class name, got {x!r}", line)
        return TokenSet(cls=x, where=where)
    if not isinstance(x, list) or not x:
        P.fail(v, f"{path}.{k}", f"expected a non-empty list, got {x!r}", line)
    if k == "ids":
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x):
            P.fail(v, f"{path}.ids", "token ids must be non-negative integers", line)
        return TokenSet(ids=[int(i) for i in x], where=where)
    if not all(isinstance(w, str) and w.strip() for w in x):
        P.fail(v, f"{path}.words", "words must be non-empty strings", line)
    return TokenSet(words=[str(w) for w in x], where=where)


def _direction(P: _P, v, path: str, line) -> Direction:
    where = P.at(v, path, line)
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in ("neuron", "values", "file"):
        P.fail(v, path, f"expected {{neuron: IDX}}, {{values: [...]}} or {{file: PATH}}, got {v!r}", line)
    (k, x), = v.items()
    if k == "neuron" and (not isinstance(x, int) or isinstance(x, bool) or x < 0):
        P.fail(v, f"{path}.neuron", f"expected a neuron index, got {x!r}", line)
    if k == "values" and (not isinstance(x, list) or not all(isinstance(a, (int, float)) for a in x)):
        P.fail(v, f"{path}.values", "expected a list of numbers", line)
    if k == "file" and not isinstance(x, str):
        P.fail(v, f"{path}.file", f"expected a path, got {x!r}", line)
    return Direction(**{k: x}, where=where)


def _input(P: _P, v, path: str, line) -> TokenSet | Direction:
    if isinstance(v, dict) and "direction" in v:
        P.keys(v, path, {"direction"})
        return _direction(P, v["direction"], f"{path}.direction", P.child(v, "direction"))
    return _token_set(P, v, path, line)


def _output(P: _P, v, path: str, line) -> OutputRule:
    where = P.at(v, path, line)
    if isinstance(v, dict) and "direction" in v:
        P.keys(v, path, {"direction"})
        return OutputRule(direction=_direction(P, v["direction"], f"{path}.direction", P.child(v, "direction")),
                          where=where)
    if isinstance(v, dict) and ("promote" in v or "suppress" in v):
        P.keys(v, path, {"promote", "suppress"})
        return OutputRule(**{k: _token_set(P, v[k], f"{path}.{k}", P.child(v, k))
                             for k in ("promote", "suppress") if k in v}, where=where)
    return OutputRule(promote=_token_set(P, v, f"{path}.promote", line), where=where)


def _neuron(P: _P, n, path: str, layer: int, line) -> NeuronSpec:
    P.keys(n, path, {"name", "layer", "replaces", "input", "output", "strength", "gain", "bias", "fit", "out_fit"},
           {"input", "output"})
    where = P.at(n, path, line)
    replaces = P.number(n, "replaces", path, None, int)
    if replaces is not None and replaces < 0:
        P.fail(n, f"{path}.replaces", "must be a neuron index >= 0", P.child(n, "replaces"))
    bias = P.number(n, "bias", path, 0.0, float, allow=("keep",))
    for key in ("bias", "strength", "gain"):
        if n.get(key) == "keep" and replaces is None:
            P.fail(n, f"{path}.{key}", "'keep' needs `replaces` (there is no neuron to keep it from)", P.child(n, key))
    if n.get("strength") == "keep" and isinstance(n.get("input"), dict) and "direction" in n["input"]:
        P.fail(n, f"{path}.strength", "'keep' applies to token-set inputs only", P.child(n, "strength"))
    return NeuronSpec(
        input=_input(P, n["input"], f"{path}.input", P.child(n, "input")),
        output=_output(P, n["output"], f"{path}.output", P.child(n, "output")),
        name=str(n.get("name", path)), layer=P.number(n, "layer", path, layer, int), replaces=replaces,
        strength=P.number(n, "strength", path, None, allow=("keep",)),
        gain=P.number(n, "gain", path, None, allow=("keep",)), bias=bias,
        fit=P.choice(n, "fit", path, "ridge", ("ridge", "mean", "lda")),
        out_fit=P.choice(n, "out_fit", path, "pinv", ("pinv", "unembed")), where=where)


def _head(P: _P, h, path: str, layer: int, line) -> HeadSpec:
    P.keys(h, path, {"name", "layer", "head", "attend", "ov", "strength", "gain"}, {"head", "attend", "ov"})
    where = P.at(h, path, line)
    head = P.number(h, "head", path, None, int)
    if head < 0:
        P.fail(h, f"{path}.head", "must be a head index >= 0", P.child(h, "head"))
    a = h["attend"]
    if isinstance(a, str):
        if a not in ("previous", "same_token", "bos"):
            P.fail(h, f"{path}.attend", f"must be previous, same_token, bos or a token set, got {a!r}",
                   P.child(h, "attend"))
        attend = a
    else:
        attend = _token_set(P, a, f"{path}.attend", P.child(h, "attend"))
    o = h["ov"]
    ov_line = P.child(h, "ov")
    if o == "copy":
        ov = "copy"
    elif isinstance(o, dict) and set(o) == {"copy"}:
        ov = _token_set(P, o["copy"], f"{path}.ov.copy", ov_line)
    elif isinstance(o, dict) and set(o) == {"map"} and isinstance(o["map"], list) and o["map"]:
        ov = []
        for i, m in enumerate(o["map"]):
            mp, ml = f"{path}.ov.map[{i}]", P.child(o["map"], i)
            P.keys(m, mp, {"from", "to"}, {"from", "to"})
            ov.append(ClassMap(src=_token_set(P, m["from"], f"{mp}.from", ml),
                               dst=_output(P, m["to"], f"{mp}.to", ml), where=P.at(m, mp, ml)))
    else:
        P.fail(h, f"{path}.ov", f"must be copy, {{copy: TOKENSET}} or {{map: [{{from: ..., to: ...}}]}}, got {o!r}",
               ov_line)
    return HeadSpec(head=head, attend=attend, ov=ov, name=str(h.get("name", path)),
                    layer=P.number(h, "layer", path, layer, int), strength=P.number(h, "strength", path, 12.0),
                    gain=P.number(h, "gain", path, 2.0), where=where)


def _direct(P: _P, data) -> DirectSpec:
    v = data.get("direct", "keep")
    line = P.child(data, "direct")
    where = P.at(v, "direct", line)
    if v in ("keep", "bigram"):
        return DirectSpec(mode=v, where=where)
    if isinstance(v, dict) and set(v) == {"bigram"}:
        opts = v["bigram"] or {}
        P.keys(opts, "direct.bigram", {"smoothing", "min_count"})
        sm = P.number(opts, "smoothing", "direct.bigram", 0.5)
        if sm <= 0:
            P.fail(opts, "direct.bigram.smoothing", "must be > 0 (log 0 has no logit)", line)
        return DirectSpec(mode="bigram", smoothing=sm, min_count=P.number(opts, "min_count", "direct.bigram", 1, int),
                          where=where)
    P.fail(v, "direct", f"must be keep, bigram or {{bigram: {{smoothing: S, min_count: N}}}}, got {v!r}", line)


def spec_from_json(text: str) -> Spec:
    """A spec stored as JSON (e.g. in the book) -> Spec."""
    return parse_spec(json.loads(text), "<book>")


def export_spec(book, classes: dict[str, list[int]] | None = None, name: str = "from-book") -> Spec:
    """A spec from the book's labelled neurons (heads are kept: their labels rarely say enough).

    A neuron labelled "A -> B" (or "A→B", "A to B") where A and B are known classes becomes a class rule
    replacing it (input class A, promote class B); any other labelled neuron is kept as its own weights
    (direction rules), so the spec still names it. Edit the result and build it."""
    import re

    known = set(classes or {})
    spec = Spec(name=name, description=f"exported from {getattr(book, 'path', 'the book')}")
    for u in book.labelled("neuron"):
        m = re.match(r"^\s*([\w.-]+)\s*(?:->|→|to)\s*([\w.-]+)\s*$", u.label)
        where = f"book: neuron {u.layer}.{u.idx} ({u.label!r})"
        if m and m.group(1) in known and m.group(2) in known:
            spec.neurons.append(NeuronSpec(input=TokenSet(cls=m.group(1), where=where),
                                           output=OutputRule(promote=TokenSet(cls=m.group(2), where=where)),
                                           name=u.label, layer=u.layer, replaces=u.idx, where=where))
        else:
            spec.neurons.append(NeuronSpec(input=Direction(neuron=u.idx, where=where),
                                           output=OutputRule(direction=Direction(neuron=u.idx, where=where)),
                                           name=u.label, layer=u.layer, replaces=u.idx, bias="keep", where=where))
    spec.text = spec.to_yaml()
    return spec
