"""The circuits task registry: a test-only analysis plugs in with one registration and no stage edit, runs,
lands in the book, resumes; bad registrations are typed errors; built-in done marks stay stable; the book
holds what the public functions return."""

from types import SimpleNamespace

import pytest
import torch

from circuitbook.book import Book
from circuitbook.book import circuits as bc
from circuitbook.circuits import CircuitsSettings, make_basis, ov_copying, ov_matrix, run_circuits, virtual_head
from circuitbook.circuits.ov import ov_factors
from circuitbook.circuits.tasks import CircuitTask, TaskError, get_task, register_task, registered_tasks, unregister_task
from circuitbook.errors import CircuitbookError

SMALL = CircuitsSettings(k=3, k_rows=2, n_pairs=10, n_trigrams=5, n_virtual=2, detector_seqs=2, detector_len=5)
BUILTIN = ["scales", "direct_path_loss", "bigram", "head", "neuron_out", "neuron_in", "composition", "virtual",
           "detectors"]


def ov_frobenius(basis, layer: int, head: int) -> float:
    """||A @ B||_F of the head's OV circuit from its factors: sqrt(tr((A^T A)(B B^T))), never forming A @ B."""
    A, B = (t.double() for t in ov_factors(basis, layer, head))
    return float(((A.T @ A) * (B @ B.T)).sum().sqrt())


@pytest.fixture
def example_task():
    """A per-head analysis defined here in the test suite, registered for one test and removed after it."""
    calls = []

    def compute(ctx, lh):
        calls.append(lh)
        return ov_frobenius(ctx.basis, *lh)

    task = register_task(CircuitTask(
        "example_ov_frobenius",
        units=lambda cfg, settings, has_corpus: [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)],
        key=lambda lh: f"L{lh[0]}H{lh[1]}",
        compute=compute,
        store=lambda conn, lh, value: bc.store_head_scores(conn, *lh, {"example_ov_frobenius": value}),
        after=("head",)))
    try:
        yield task, calls
    finally:
        unregister_task(task.name)


def test_a_registered_task_runs_is_stored_and_resumes(example_task, gpt2_2l, tmp_path):
    task, calls = example_task
    assert [t.name for t in registered_tasks()] == BUILTIN + [task.name] and get_task(task.name) is task
    book = Book.open(tmp_path / "b.db")
    first = run_circuits(gpt2_2l, book, None, SMALL, progress=False)
    L, H = gpt2_2l.cfg.n_layers, gpt2_2l.cfg.n_heads
    assert len(calls) == L * H
    b = make_basis(gpt2_2l, None, SMALL.pos_window)  # no corpus: unit scales, as in the run
    scores = bc.head_scores(book)
    for l in range(L):
        for h in range(H):
            dense = float(torch.linalg.matrix_norm(ov_matrix(b, l, h).double()))
            assert abs(scores[(l, h)]["example_ov_frobenius"] - dense) < 1e-6 * dense
            assert f"example_ov_frobenius:L{l}H{h}" in bc.done_tasks(book)

    again = run_circuits(gpt2_2l, book, None, SMALL, progress=False)
    assert len(calls) == L * H  # not computed again
    assert again.computed == 0 and again.skipped == first.computed


def test_bad_registrations_are_typed_errors(example_task):
    task, _ = example_task
    with pytest.raises(TaskError, match="already registered"):
        register_task(task)
    with pytest.raises(TaskError, match="already registered"):
        register_task(CircuitTask("head", compute=lambda ctx, arg: None, store=lambda conn, arg, r: None))
    with pytest.raises(TaskError, match="registered first"):
        register_task(CircuitTask("late", compute=lambda ctx, arg: None, store=lambda conn, arg, r: None,
                                  after=("not_a_task",)))
    with pytest.raises(TaskError, match="no ':'"):
        register_task(CircuitTask("a:b", compute=lambda ctx, arg: None, store=lambda conn, arg, r: None))
    with pytest.raises(TaskError, match="needed by"):
        unregister_task("composition")  # 'virtual' runs after it
    with pytest.raises(TaskError, match="no circuits task"):
        get_task("nope")
    assert issubclass(TaskError, CircuitbookError)
    assert [t.name for t in registered_tasks()] == BUILTIN + [task.name]  # nothing half-registered


def test_builtin_done_marks_are_the_ones_old_books_hold():
    cfg = SimpleNamespace(n_layers=2, n_heads=2)
    marks = [t.done_mark(a) for t in registered_tasks() if t.name in BUILTIN for a in t.units(cfg, SMALL, True)]
    assert marks == [
        "scales", "direct_path_loss", "bigram", "head:L0H0", "head:L0H1", "head:L1H0", "head:L1H1",
        "neuron_out:0:", "neuron_out:0:L1H0", "neuron_out:0:L1H1", "neuron_out:1:",
        "neuron_in:0:", "neuron_in:0:L0H0", "neuron_in:0:L0H1",
        "neuron_in:1:", "neuron_in:1:L0H0", "neuron_in:1:L0H1", "neuron_in:1:L1H0", "neuron_in:1:L1H1",
        "composition", "virtual", "detectors"]
    no_corpus = [t.name for t in registered_tasks() if t.name in BUILTIN and t.units(SimpleNamespace(n_layers=1, n_heads=2),
                                                                           SMALL, False)]
    assert no_corpus == ["scales", "bigram", "head", "neuron_out", "neuron_in", "detectors"]


def test_the_book_holds_what_the_public_functions_return(gpt2_2l, tmp_path):
    book = Book.open(tmp_path / "b.db")
    run_circuits(gpt2_2l, book, None, SMALL, progress=False)
    b = make_basis(gpt2_2l, None, SMALL.pos_window)
    for (l, h), s in bc.head_scores(book).items():
        e = ov_copying(b, l, h)
        assert s["ov_copying"] == e.copying and s["ov_positive_share"] == e.positive_share
    for v in bc.virtual_heads(book):
        e = virtual_head(b, v["l1"], v["h1"], v["l2"], v["h2"], SMALL.k_rows, SMALL.n_pairs).eigen
        assert v["copying"] == e.copying and v["positive_share"] == e.positive_share
