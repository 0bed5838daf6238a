"""Handcraft: write an explanation as a spec, build it into weights, splice it in, and measure how much of
the original model it recovers (``evaluate``) or how much the book's labelled units cover (``coverage``).

    from circuitbook.handcraft import load_spec, evaluate_spec
    r = evaluate_spec(load_spec("spec.yaml"), model, fit_stories, eval_stories, classes)
    print(r.evaluation.summary())

Dictionary features (``feature/<dictionary>/<idx>``) take part through :mod:`.features`: a spec may read or
write a feature's direction and replace a feature (the dictionary spliced in place of its layer's MLP), and
:func:`feature_coverage` keeps a dictionary's labelled features. Stored dictionaries are loaded by
``circuitbook.dictionary.handcraft`` (a stage to the right of this one).
"""

from .build import Built, Calibration, bigram_counts, build, calibrate, fit_bigram_embedding, resolve_tokens, \
    token_classes_from_book
from .coverage import (Coverage, FeatureCoverage, coverage, coverage_from_book, feature_coverage,
                       feature_coverage_from_book, labelled_features)
from .evaluate import Evaluation, SpecResult, baselines, evaluate, evaluate_spec, mean_loss, recovered
from .export import export_spec
from .features import ERROR_MODES, FeatureDictionary, FeatureSplice, feature_means, splice_interventions
from .parse import load_spec, parse_spec
from .spec import (ClassMap, Direction, DirectSpec, FeatureRef, HeadSpec, NeuronSpec, OutputRule, Spec, SpecError,
                   TokenSet)
from .splice import (SpliceError, UnitMeans, ablate_embedding, ablate_heads, ablate_neurons, ablate_units,
                     add_neurons, replace_head, replace_neuron, resample_interventions, save_checkpoint, unit_means)

__all__ = [
    "Built", "Calibration", "bigram_counts", "build", "calibrate", "fit_bigram_embedding", "resolve_tokens",
    "token_classes_from_book", "Coverage", "FeatureCoverage", "coverage", "coverage_from_book", "feature_coverage",
    "feature_coverage_from_book", "labelled_features", "ERROR_MODES", "FeatureDictionary", "FeatureSplice",
    "feature_means", "splice_interventions", "FeatureRef", "Evaluation", "SpecResult", "baselines",
    "evaluate", "evaluate_spec", "mean_loss", "recovered", "ClassMap", "Direction", "DirectSpec", "HeadSpec",
    "NeuronSpec", "OutputRule", "Spec", "SpecError", "TokenSet", "export_spec", "load_spec", "parse_spec",
    "SpliceError", "UnitMeans", "ablate_embedding", "ablate_heads", "ablate_neurons", "ablate_units", "add_neurons",
    "replace_head", "replace_neuron", "resample_interventions", "save_checkpoint", "unit_means",
]
