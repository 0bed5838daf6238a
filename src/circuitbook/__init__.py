"""circuitbook: a workbench for circuits-style interpretability of tiny language models."""

from .model import Model, Tokenizer, Weights, load_model, run

__version__ = "0.1.0"
__all__ = ["Model", "Tokenizer", "Weights", "load_model", "run", "__version__"]
