"""Per-prompt attribution graphs, interventions and predictions (see ``attribution`` for the maths).

    g = attribute(model, "Once upon a time, there was a girl. She", target=" was")
    g.to_json(); g.to_svg(); g          # (in Jupyter: renders inline)
    ablate(model, prompt, "head/0/9/14/13").delta
    predict(model, prompt, k=5)
"""

from .attribution import DirectLogit, Edge, Graph, GraphError, Node, attribute, direct_logit, prompt_tokens, resolve_token
from .intervene import Ablation, InterventionResult, ablate
from .predictions import Prediction, predict
from .render import SCHEMA, from_json, to_json, to_svg

__all__ = [
    "DirectLogit", "Edge", "Graph", "GraphError", "Node", "attribute", "direct_logit", "prompt_tokens",
    "resolve_token", "Ablation", "InterventionResult", "ablate", "Prediction", "predict", "SCHEMA", "from_json",
    "to_json", "to_svg",
]
