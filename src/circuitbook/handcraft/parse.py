"""Reading a handcraft spec: YAML/JSON text -> the validated dataclasses of :mod:`.spec`.

The YAML loader records the line of every mapping value and list item, so every error names the file,
the line and the field (``spec.yaml:12: neurons[0].input: ...``) and is a :class:`~.spec.SpecError`.
The format is documented in :mod:`.spec` and ``docs/handcraft-spec.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .spec import (ClassMap, Direction, DirectSpec, FeatureRef, HeadSpec, NeuronSpec, OutputRule, Spec, SpecError,
                   TokenSet)


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
                          "ablate", "layer", "dictionary_error"})
    layer = P.number(data, "layer", "spec", 0, int)
    spec = Spec(name=str(data.get("name", "spec")), description=str(data.get("description", "")), source=source)
    spec.mlp = P.choice(data, "mlp", "spec", "keep", ("keep", "replace"))
    spec.attention = P.choice(data, "attention", "spec", "keep", ("keep", "replace"))
    spec.ablate = P.choice(data, "ablate", "spec", "mean", ("zero", "mean"))
    spec.dictionary_error = P.choice(data, "dictionary_error", "spec", "keep", ("keep", "drop"))
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
        if isinstance(n.replaces, FeatureRef):
            k = ("feature", n.replaces.dictionary, n.replaces.idx)
            if k in seen:
                raise SpecError(f"{n.where}: {n.replaces.describe()} is already replaced by {seen[k]}")
            seen[k] = n.where
        elif n.replaces is not None:
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


def _feature(P: _P, v, path: str, line) -> FeatureRef:
    """``{dictionary: NAME, idx: I}`` (the value of a ``feature:`` key) -> FeatureRef."""
    P.keys(v, path, {"dictionary", "idx"}, {"dictionary", "idx"})
    name, idx = v["dictionary"], v["idx"]
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not str(name).strip():
        P.fail(v, f"{path}.dictionary", f"expected a dictionary name, got {name!r}", P.child(v, "dictionary"))
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        P.fail(v, f"{path}.idx", f"expected a feature index >= 0, got {idx!r}", P.child(v, "idx"))
    return FeatureRef(str(name), int(idx), where=P.at(v, path, line))


def _direction(P: _P, v, path: str, line) -> Direction:
    where = P.at(v, path, line)
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in ("neuron", "feature", "values", "file"):
        P.fail(v, path, f"expected {{neuron: IDX}}, {{feature: {{dictionary: NAME, idx: I}}}}, {{values: [...]}} "
                        f"or {{file: PATH}}, got {v!r}", line)
    (k, x), = v.items()
    if k == "feature":
        return Direction(feature=_feature(P, x, f"{path}.feature", P.child(v, "feature")), where=where)
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
    replaces = _replaces(P, n, path)
    bias = P.number(n, "bias", path, 0.0, float, allow=("keep",))
    feature_in = isinstance(n.get("input"), dict) and isinstance(n["input"].get("direction"), dict) \
        and "feature" in n["input"]["direction"]
    for key in ("bias", "strength", "gain"):
        if n.get(key) == "keep" and replaces is None and not (key == "bias" and feature_in):
            P.fail(n, f"{path}.{key}", "'keep' needs `replaces` (there is no neuron to keep it from)", P.child(n, key))
    if n.get("strength") == "keep" and isinstance(n.get("input"), dict) and "direction" in n["input"]:
        P.fail(n, f"{path}.strength", "'keep' applies to token-set inputs only", P.child(n, "strength"))
    return NeuronSpec(
        input=_input(P, n["input"], f"{path}.input", P.child(n, "input")),
        output=_output(P, n["output"], f"{path}.output", P.child(n, "output")),
        name=str(n.get("name", path)), replaces=replaces,
        layer=P.number(n, "layer", path, None if isinstance(replaces, FeatureRef) else layer, int),
        strength=P.number(n, "strength", path, None, allow=("keep",)),
        gain=P.number(n, "gain", path, None, allow=("keep",)), bias=bias,
        fit=P.choice(n, "fit", path, "ridge", ("ridge", "mean", "lda")),
        out_fit=P.choice(n, "out_fit", path, "pinv", ("pinv", "unembed")), where=where)


def _replaces(P: _P, n, path: str) -> int | FeatureRef | None:
    """``replaces``: a neuron index, or ``{feature: {dictionary: NAME, idx: I}}``."""
    v = n.get("replaces")
    if isinstance(v, dict):
        P.keys(v, f"{path}.replaces", {"feature"}, {"feature"})
        return _feature(P, v["feature"], f"{path}.replaces.feature", P.child(n, "replaces"))
    replaces = P.number(n, "replaces", path, None, int)
    if replaces is not None and replaces < 0:
        P.fail(n, f"{path}.replaces", "must be a neuron index >= 0 or {feature: {dictionary: NAME, idx: I}}",
               P.child(n, "replaces"))
    return replaces


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
