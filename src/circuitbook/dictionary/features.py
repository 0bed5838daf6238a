"""Features for the other stages: their activations on tokens, and their circuits read off the weights.

``feature_acts(model, d, tokens)`` is what the dictionary's features do on a batch ([batch, pos, d_sae]).

Circuits reuse the neuron analyses (``circuits.neuron_out`` / ``circuits.neuron_in``) unchanged, on the
model's weights with the dictionary *in place of the MLP* (:func:`feature_weights`): W_in[L] = W_enc,
b_in[L] = b_enc, W_out[L] = W_dec, b_out[L] = b_dec, d_mlp = d_sae. The basis then folds ln2 into W_enc
and centres W_dec exactly as it does a neuron's weights, so a feature's output effect is W_dec[i] · W_U
through the folded final norm, and its input effect (transcoders) is the token embeddings through ln2 into
W_enc (directly, and for 1-layer models through each head's OV circuit). Stacked per-layer weights need
one d_mlp, so this works for 1-layer models (multi-layer: the stacked layout has no room; refused).
The skip term of a skip-transcoder is not a feature and is left out.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .activations import layer_io
from .config import DictionaryError
from .model import Dictionary


@torch.no_grad()
def feature_acts(model, d: Dictionary, tokens: Tensor) -> Tensor:
    """Feature activations [batch, pos, d_sae] of ``d`` on ``tokens`` [batch, pos]."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    x, _ = layer_io(model, d.cfg.layer, d.cfg.kind, tokens)
    return d.to(x.device).encode(x).reshape(*tokens.shape, d.cfg.d_sae)


def feature_weights(weights, d: Dictionary):
    """The model's Weights with layer L's MLP replaced by the dictionary (see the module docstring)."""
    cfg = weights.cfg
    if cfg.n_layers != 1:
        raise DictionaryError("feature circuits need a 1-layer model (stacked weights share one d_mlp)")
    if d.cfg.d_in != cfg.d_model:
        raise DictionaryError(f"the dictionary reads d_in={d.cfg.d_in}, the model's d_model is {cfg.d_model}")
    dt = weights.W_out.dtype
    t = d.tensors()
    return weights.replace(cfg=dataclasses.replace(cfg, d_mlp=d.cfg.d_sae), W_in=t["W_enc"][None].to(dt),
                           b_in=t["b_enc"][None].to(dt), W_out=t["W_dec"][None].to(dt), b_out=t["b_dec"][None].to(dt),
                           W_gate=None)


def feature_output_effects(model, d: Dictionary, scales=None, k: int = 10):
    """LayerEffects (circuits.effects) of every feature on the logits, direct path."""
    from ..circuits.basis import make_basis
    from ..circuits.neuron_out import neuron_output_effects

    return neuron_output_effects(make_basis(feature_weights(model.weights, d), scales), d.cfg.layer, None, k)


def feature_input_effects(model, d: Dictionary, via=None, scales=None, k: int = 10):
    """LayerEffects of the tokens that drive every feature (transcoders: they read the MLP input)."""
    from ..circuits.basis import make_basis
    from ..circuits.neuron_in import neuron_input_effects

    if d.cfg.kind == "sae":
        raise DictionaryError("an SAE reads the MLP output, not the token stream: its input effects are not defined here")
    return neuron_input_effects(make_basis(feature_weights(model.weights, d), scales), d.cfg.layer, via, k)
