"""A saved model is one folder: the Hugging Face backbone (safetensors + config.json), its
tokenizer, our JSON config, and any extra modules as safetensors files. Never pickle."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn


def save_folder(path: str | os.PathLike, backbone, tokenizer, config: BaseModel, config_file: str,
                parts: dict[str, nn.Module | None]) -> Path:
    """Write the folder; `parts` maps file names to modules (None: the model has no such part)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / config_file).write_text(config.model_dump_json(indent=2))
    for file, module in parts.items():
        if module is not None:
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path / file)
    return path


def load_parts(path: str | os.PathLike, parts: dict[str, nn.Module | None]) -> None:
    """Load the extra modules `save_folder` wrote into the given (already built) modules."""
    for file, module in parts.items():
        if module is not None:
            module.load_state_dict(load_file(Path(path) / file))
