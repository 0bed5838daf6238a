"""Argument helpers shared by commands."""

from __future__ import annotations

import torch

from ..errors import CircuitbookError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def add_model_args(p, required: bool = True) -> None:
    if required:
        p.add_argument("model", help="model directory (HF format) or hub id, e.g. roneneldan/TinyStories-1Layer-21M")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")


def load(args, model_attr: str = "model"):
    from ..model import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitbookError(f"--device {args.device} asked for but no CUDA device is available")
    model = load_model(getattr(args, model_attr), dtype=DTYPES[args.dtype], device=args.device)
    if DTYPES[args.dtype] == torch.bfloat16 and args.device == "cpu":
        import sys

        from ..tune import bf16_warning

        msg = bf16_warning(model.cfg.d_model, model.cfg.d_mlp)
        if msg:
            print(msg, file=sys.stderr)
    return model
