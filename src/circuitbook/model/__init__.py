"""Model stage: config parsing, arch-neutral weights, the forward with taps, loading and export."""

from .config import ConfigError, ModelConfig, parse_hf_config, read_config
from .forward import hook_names, log_probs, run
from .load import DTYPES, Model, ModelLoadError, from_hf_model, load_model, save_hf
from .tokenizer import Tokenizer
from .weights import Weights, from_hf_state_dict, to_hf_state_dict, to_hooked_transformer, to_transformer_lens

__all__ = [
    "ConfigError", "ModelConfig", "parse_hf_config", "read_config", "hook_names", "log_probs", "run",
    "Model", "ModelLoadError", "from_hf_model", "load_model", "save_hf", "Tokenizer", "Weights",
    "from_hf_state_dict", "to_hf_state_dict", "to_transformer_lens", "to_hooked_transformer",
]
