"""Handcraft: write an explanation as a spec, build it into weights, splice it in, and measure how much of
the original model it recovers (``evaluate``) or how much the book's labelled units cover (``coverage``).

    from circuitbook.handcraft import load_spec, evaluate_spec
    r = evaluate_spec(load_spec("spec.yaml"), model, fit_stories, eval_stories, classes)
    print(r.evaluation.summary())
"""

from .build import Built, Calibration, bigram_counts, build, calibrate, fit_bigram_embedding, resolve_tokens, \
    token_classes_from_book
from .coverage import Coverage, coverage, coverage_from_book
from .evaluate import Evaluation, SpecResult, baselines, evaluate, evaluate_spec, mean_loss, recovered
from .export import export_spec
from .parse import load_spec, parse_spec
from .spec import ClassMap, Direction, DirectSpec, HeadSpec, NeuronSpec, OutputRule, Spec, SpecError, TokenSet
from .splice import (SpliceError, UnitMeans, ablate_embedding, ablate_heads, ablate_neurons, ablate_units,
                     add_neurons, replace_head, replace_neuron, resample_interventions, save_checkpoint, unit_means)

__all__ = [
    "Built", "Calibration", "bigram_counts", "build", "calibrate", "fit_bigram_embedding", "resolve_tokens",
    "token_classes_from_book", "Coverage", "coverage", "coverage_from_book", "Evaluation", "SpecResult", "baselines",
    "evaluate", "evaluate_spec", "mean_loss", "recovered", "ClassMap", "Direction", "DirectSpec", "HeadSpec",
    "NeuronSpec", "OutputRule", "Spec", "SpecError", "TokenSet", "export_spec", "load_spec", "parse_spec",
    "SpliceError", "UnitMeans", "ablate_embedding", "ablate_heads", "ablate_neurons", "ablate_units", "add_neurons",
    "replace_head", "replace_neuron", "resample_interventions", "save_checkpoint", "unit_means",
]
