"""How the model is loaded and made fast: used only by session.py (imports torch lazily).

`load_model` returns a ready, eval-mode model; `QUANTIZE_CHOICES` lists what
`--quantize` accepts.
"""
from __future__ import annotations

QUANTIZE_CHOICES = ("none", "int8")


def load_model(path: str, dtype: str, device: str, quantize: str = "none"):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=getattr(torch, dtype),
        device_map=device if device != "cpu" else None,
        use_safetensors=True,
        trust_remote_code=False,
    ).eval()
    if quantize != "none":
        from .errors import ModelError

        raise ModelError(f"--quantize {quantize} is not available yet")
    return model
