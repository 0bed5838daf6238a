"""Circuits stage: read mechanisms off the weights (and a few detectors off activations).

One analysis per module, each a pure function of the model returning small dataclasses of tensors:

    basis           processed float32 weights + tokens through the norm (Basis, make_basis, NormScales)
    screened_topk   chunked products with running per-row and global top-k (never a d_vocab^2 matrix)
    neuron_out      neuron -> logits (direct, and through later heads' OV)
    neuron_in       tokens -> neuron (from the embedding, and through each head's OV)
    direct_path     bigram table W_E -> W_U and the direct-path-only loss
    ov, qk          per-head OV / QK token circuits: per-row tops, global top pairs; positional QK profile
    eigen           OV / QK eigenvalues via the factored form; copying score
    skip_trigrams   key ... query -> output triples from the QK and OV tops
    composition     Q/K/V composition scores (TransformerLens' definition) and virtual-head OV circuits
    detectors       previous-token / duplicate-token / induction scores on repeated random tokens
    tasks           the registry of analyses the runner stores (CircuitTask, register_task, registered_tasks)
    builtin_tasks   the analyses above registered as tasks (each calls the public function it stores)
    run             run_circuits(model, book, stories): every registered task, stored in the book, resumable

Every function accepts a Model, Weights or Basis; build the Basis once (``b = make_basis(model)``) and pass it
when calling several functions, since building it processes the weights.

    >>> b = make_basis(model)
    >>> ov_tops(b, 0, 3).top_pairs.as_list()[:5]          # (source, output, logit) strongest first
    >>> neuron_output_effect(b, 0, 896).top_ids            # tokens neuron 896 promotes
"""

from .basis import Basis, CircuitError, NormScales, make_basis, measure_scales
from .composition import CompositionScores, VirtualHead, composition_scores, virtual_head
from .detectors import DetectorScores, detector_scores, repeated_random_tokens
from .direct_path import BigramTable, DirectPathLoss, bigram_logits, bigram_table, direct_path_loss
from .effects import LayerEffects, TokenEffect
from .eigen import EigenSummary, ov_copying, ov_eigenvalues, qk_eigenvalues, qk_same_token
from .neuron_in import neuron_input_effect, neuron_input_effects, neuron_input_vector
from .neuron_out import neuron_output_effect, neuron_output_effects, neuron_output_vector
from .ov import ov_matrix, ov_tops
from .qk import PositionalQK, positional_qk, qk_matrix, qk_tops
from .run import CircuitsSettings, CircuitsSummary, run_circuits
from .tasks import CircuitTask, TaskContext, TaskError, get_task, register_task, registered_tasks, unregister_task
from .skip_trigrams import SkipTrigrams, skip_trigrams
from .screened_topk import CircuitTops, Pairs, RowTops, chunked_tops

__all__ = [
    "Basis", "CircuitError", "NormScales", "make_basis", "measure_scales", "CompositionScores", "VirtualHead",
    "composition_scores", "virtual_head", "DetectorScores", "detector_scores", "repeated_random_tokens",
    "BigramTable", "DirectPathLoss", "bigram_logits", "bigram_table", "direct_path_loss", "LayerEffects",
    "TokenEffect", "EigenSummary", "ov_copying", "ov_eigenvalues", "qk_eigenvalues", "qk_same_token",
    "neuron_input_effect", "neuron_input_effects", "neuron_input_vector", "neuron_output_effect",
    "neuron_output_effects", "neuron_output_vector", "ov_matrix", "ov_tops", "PositionalQK", "positional_qk",
    "qk_matrix", "qk_tops", "CircuitsSettings", "CircuitsSummary", "run_circuits", "SkipTrigrams",
    "skip_trigrams", "CircuitTops", "Pairs", "RowTops", "chunked_tops", "CircuitTask", "TaskContext", "TaskError",
    "get_task", "register_task", "registered_tasks", "unregister_task",
]
