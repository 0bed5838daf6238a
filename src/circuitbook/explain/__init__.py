"""The explain stage: a structured explanation for every unit, a score for every explanation, and a
scorecard for the whole book spliced into the model as one.

    program.py    explanations as programs in the handcraft spec's vocabulary (token sets, classes)
    evidence.py   what the book knows about a unit (one reader per unit kind)
    propose.py    offline proposals from that evidence (author "auto")
    llm.py        optional free-text proposals from any OpenAI-compatible chat endpoint (author "llm:<model>")
    labels.py     hand-written labels that parse, as programs (a person's label wins)
    simulate.py   what a program says the unit does on given tokens
    access.py     how the scorer reads and replaces each kind's activation
    score.py      simulation / detection / ablation scores on held-out stories
    scorecard.py  every explanation at once: loss recovered for the whole MLP, with its curve
    to_spec.py    explanations -> a handcraft spec (``circuitbook handcraft --from-book``)
    run.py        explain_book / score_book, what the CLI calls

Data flow: reads the book (and the model for scoring), writes ``book/explanations.py``'s tables.
"""

from .program import ActivationProgram, AttentionProgram, Clause, ProgramError, describe, program_from_dict
from .run import explain_book, score_book
from .score import ScoreError, ScoreSettings, balanced_accuracy, correlation_score
from .simulate import Resolver, simulate_activation, simulate_pattern

__all__ = ["ActivationProgram", "AttentionProgram", "Clause", "ProgramError", "Resolver", "ScoreError",
           "ScoreSettings", "balanced_accuracy", "correlation_score", "describe", "explain_book",
           "program_from_dict", "score_book", "simulate_activation", "simulate_pattern"]
