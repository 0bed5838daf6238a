"""The unit-kind registry: spellings, checks, duplicates, and a test-only kind that the book takes as is."""

from __future__ import annotations

import sqlite3

import pytest

from circuitbook import units as U
from circuitbook.book import Book, BookError
from circuitbook.demo import build_demo


@pytest.fixture()
def example_kind():
    """A kind registered from the test suite only: one 'cell' per residual dimension (no stage knows it)."""
    kind = U.register_unit_kind(U.UnitKind(
        name="cell", letter="C", title="cell", count=lambda cfg, layer: int(U._cfg_get(cfg, "d_model")),
        tap="blocks.{layer}.hook_resid_post", unit_axis=2, writes="itself (a residual coordinate)",
        write_weights=None, stats="activation", order=5, sublayer=2))
    yield kind
    U.unregister_unit_kind("cell")


def test_builtin_spellings_round_trip():
    for text, ref in [("neuron/0/22", U.UnitRef("neuron", 0, 22)), ("N0.22", U.UnitRef("neuron", 0, 22)),
                      ("head:1:3", U.UnitRef("head", 1, 3)), ("H1.3", U.UnitRef("head", 1, 3))]:
        assert U.parse_unit(text) == ref
    r = U.UnitRef("head", 1, 3)
    assert (r.key, r.path, str(r)) == ("H1.3", "head/1/3", "head/1/3")
    assert U.parse_unit(r.key) == U.parse_unit(r.path) == r
    assert U.unit_key("neuron", 0, 896) == "N0.896"


@pytest.mark.parametrize("bad", ["widget/0/1", "Q0.1", "neuron/a/1", "N0", ""])
def test_bad_unit_text(bad):
    with pytest.raises(U.UnitError):
        U.parse_unit(bad)


def test_counts_taps_and_writes_match_the_model():
    m = build_demo().model
    cfg = m.cfg
    refs = list(U.all_units(cfg))
    assert len(refs) == cfg.n_layers * (cfg.d_mlp + cfg.n_heads)
    assert refs[0] == U.UnitRef("neuron", 0, 0) and refs[-1] == U.UnitRef("head", cfg.n_layers - 1, cfg.n_heads - 1)
    from circuitbook.model.forward import hook_names

    names = set(hook_names(cfg))
    for k in U.unit_kinds():
        assert k.tap_name(0) in names
    out = m.run(m.to_tokens("Once upon a time"), taps=[U.NEURON.tap_name(0), U.HEAD.tap_name(0)])
    assert out[U.NEURON.tap_name(0)].shape[U.NEURON.unit_axis] == cfg.d_mlp
    assert out[U.HEAD.tap_name(0)].shape[U.HEAD.unit_axis] == cfg.n_heads
    w = m.weights
    assert U.NEURON.write_weights(w, 0, 5).shape == (1, cfg.d_model)
    assert U.HEAD.write_weights(w, 0, 1).shape == (cfg.d_head, cfg.d_model)
    with pytest.raises(U.UnitError, match="no neuron 0.64"):
        U.NEURON.check(cfg, 0, cfg.d_mlp)


def test_duplicates_are_errors(example_kind):
    with pytest.raises(U.UnitError, match="already registered"):
        U.register_unit_kind(example_kind)
    with pytest.raises(U.UnitError, match="letter 'N' is already used"):
        U.register_unit_kind(U.UnitKind(name="other", letter="N", title="x", count=lambda c, l: 1, tap="",
                                        unit_axis=2, writes="", write_weights=None, stats="activation",
                                        order=9, sublayer=2))
    with pytest.raises(U.UnitError, match="unknown unit kind"):
        U.unit_kind("nope")


def test_a_registered_kind_is_a_unit_of_the_book(tmp_path, example_kind):
    """No stage module knows 'cell': the book checks, labels, lists and keys it through the registry."""
    book = Book.open(tmp_path / "b.db")
    book.bind_model(build_demo().model)
    d = book.config["d_model"]
    book.set_label("cell", 0, 3, label="a residual coordinate", status="hypothesis")
    u = book.unit("cell", 0, 3)
    assert (u.label, u.key, u.ref.path) == ("a residual coordinate", "C0.3", "cell/0/3")
    assert [x.key for x in book.labelled("cell")] == ["C0.3"]
    cells = [u for u in book.units() if u[0] == "cell"]
    assert len(cells) == book.config["n_layers"] * d and list(book.units("cell"))[-1] == ("cell", 0, d - 1)
    with pytest.raises(BookError, match="no cell 0.%d" % d):
        book.unit("cell", 0, d)


def test_book_made_before_the_registry_upgrades(tmp_path):
    """A book whose units table still has the old CHECK (kind IN ('neuron', 'head')) opens, keeps its labels,
    and accepts a kind registered later."""
    path = tmp_path / "old.db"
    from circuitbook.book.core import CORE_MIGRATIONS

    c = sqlite3.connect(path)
    c.executescript(CORE_MIGRATIONS[0])
    c.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER)")
    c.execute("INSERT INTO schema_version VALUES ('core', 1)")
    c.execute("INSERT INTO units (kind, layer, idx, label, status) VALUES ('neuron', 0, 7, 'old label', 'supported')")
    with pytest.raises(sqlite3.IntegrityError):
        c.execute("INSERT INTO units (kind, layer, idx) VALUES ('feature', 0, 1)")
    c.commit()
    c.close()
    book = Book.open(path)
    assert book.schema_versions()["core"] == len(CORE_MIGRATIONS)
    book.bind_model(build_demo().model)
    assert (book.neuron(0, 7).label, book.neuron(0, 7).status) == ("old label", "supported")
    U.register_unit_kind(U.UnitKind(name="probe", letter="P", title="probe", count=lambda cfg, l: 4,
                                    tap="blocks.{layer}.mlp.hook_post", unit_axis=2, writes="", write_weights=None,
                                    stats="activation", order=2, sublayer=2))
    try:
        book.set_label("probe", 0, 1, label="new kind")
        assert book.unit("probe", 0, 1).label == "new kind"
    finally:
        U.unregister_unit_kind("probe")


def test_a_component_can_say_how_many_units_a_kind_has(tmp_path):
    """Kinds whose size is not in the model config (dictionary features) count from a component's context."""
    from circuitbook.book.core import _COMPONENTS, Component, register_component

    U.register_unit_kind(U.UnitKind(name="probe", letter="P", title="probe",
                                    count=lambda ctx, g: ctx["probe_sizes"][g],
                                    layers=lambda ctx: len(ctx["probe_sizes"]),
                                    tap="blocks.{layer}.mlp.hook_post", unit_axis=2, writes="", write_weights=None,
                                    stats="activation", order=2, sublayer=2))
    register_component(Component("probe_test", [], unit_context=lambda book: {"probe_sizes": [3, 2]}))
    try:
        book = Book.open(tmp_path / "b.db")
        book.bind_model(build_demo().model)
        assert list(book.units("probe")) == [("probe", 0, 0), ("probe", 0, 1), ("probe", 0, 2),
                                             ("probe", 1, 0), ("probe", 1, 1)]
        book.set_label("probe", 1, 1, label="ok")
        with pytest.raises(BookError, match="no probe 1.2"):
            book.unit("probe", 1, 2)
    finally:
        U.unregister_unit_kind("probe")
        _COMPONENTS.pop("probe_test")


def test_a_registered_kind_has_web_pages(tmp_path, example_kind):
    """The web layer knows no 'cell' either: its page, index filter, /go and links come from the registry."""
    from fastapi.testclient import TestClient

    from circuitbook.book.render import Ctx
    from circuitbook.web import create_app

    book = Book.open(tmp_path / "b.db")
    book.bind_model(build_demo().model)
    book.set_label("cell", 0, 3, label="<cell> label", notes="a residual coordinate")
    c = TestClient(create_app(book), base_url="http://127.0.0.1")
    page = c.get("/cell/0/3")
    assert page.status_code == 200 and "&lt;cell&gt; label" in page.text and "C0.3" in page.text
    assert c.get(f"/cell/0/{book.config['d_model']}").status_code == 404
    index = c.get("/", params={"kind": "cell", "q": "cell"})
    assert index.status_code == 200 and "/cell/0/3" in index.text and "/neuron/0/" not in index.text
    go = c.get("/go", params={"unit": "c0.3"}, follow_redirects=False)
    assert go.status_code == 303 and go.headers["location"].endswith("/cell/0/3")
    assert "C0.3</a>" in Ctx(link=lambda k, l, i: f"/{k}/{l}/{i}").unit_link("cell", 0, 3)
