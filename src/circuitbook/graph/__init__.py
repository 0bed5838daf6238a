"""Per-prompt attribution graphs, interventions and predictions.

    g = attribute(model, "Once upon a time, there was a girl. She", target=" was")
    to_json(g); to_svg(g); show(g)      # (in Jupyter a bare ``g`` also renders inline)
    ablate(model, prompt, "head/0/9/14/13").delta
    predict(model, prompt, k=5)

Modules: ``types`` (Node / Edge / Graph: ordering, edge orientation and the conservation sums),
``prompt`` (prompt and token helpers), ``attribution`` (the maths), ``intervene``, ``predictions``,
``render`` (JSON / SVG / HTML; imports the types, never the other way round).
"""

from .attribution import attribute, direct_logit
from .intervene import Ablation, InterventionResult, ablate
from .predictions import Prediction, predict
from .prompt import prompt_tokens, resolve_token
from .render import SCHEMA, GraphView, from_json, show, to_html, to_json, to_svg
from .types import DirectLogit, Edge, Graph, GraphError, Node

__all__ = [
    "DirectLogit", "Edge", "Graph", "GraphError", "Node", "attribute", "direct_logit", "prompt_tokens",
    "resolve_token", "Ablation", "InterventionResult", "ablate", "Prediction", "predict", "SCHEMA", "from_json",
    "to_json", "to_svg", "to_html", "show", "GraphView",
]
