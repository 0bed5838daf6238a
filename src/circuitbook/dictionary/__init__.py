"""Dictionary features: train and load transcoders and SAEs, measure them, and splice them into the model.

Modules: config (DictionaryConfig, TrainConfig), model (Dictionary: encode/decode), activations (layer
inputs/targets streamed through a bounded shuffle buffer), trainer (resumable training), metrics (L0, FVU,
densities), splice (the MLP replaced by the dictionary: CE / KL / loss recovered), formats (SAELens,
circuit-tracer, sparsify files), features (feature activations for the other stages).
"""

from .config import ACTIVATIONS, KINDS, DictionaryConfig, DictionaryError, TrainConfig
from .model import Dictionary

__all__ = ["ACTIVATIONS", "KINDS", "Dictionary", "DictionaryConfig", "DictionaryError", "TrainConfig"]
