"""A saved model is one folder: the Hugging Face backbone (safetensors + config.json), its
tokenizer, our JSON config, and any extra modules as safetensors files. Never pickle.

`Pretrained` is the one loading and saving path of URG and the baselines: a class names its
config (`config_class`, `config_file`) and says how its backbone is built from a preset or
loaded from a folder; `from_pretrained` and `save_pretrained` are written here, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer

from urg_ray.presets import set_dropout


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


class Pretrained:
    """`from_pretrained` / `save_pretrained` for an nn.Module built as `cls(backbone, tokenizer, config)`."""

    config_class: ClassVar[type[BaseModel]]
    config_file: ClassVar[str]
    backbone: nn.Module
    tokenizer: Any
    config: BaseModel

    # ---- hooks a model class fills in -----------------------------------------------------
    @classmethod
    def _preset_config(cls, name: str, random_init: bool) -> dict:
        """Config fields for a preset name or hub id, before the caller's overrides."""
        raise NotImplementedError

    @classmethod
    def _build_backbone(cls, config, dtype: torch.dtype | None) -> tuple[nn.Module, Any]:
        """Backbone and tokenizer for `config.preset` (random init or hub weights)."""
        raise NotImplementedError

    @classmethod
    def _load_backbone(cls, path: Path, dtype: torch.dtype | None) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def _saved_config(cls, path: Path) -> BaseModel:
        """The config a folder holds; a folder without one is not ours."""
        file = path / cls.config_file
        if not file.is_file():
            raise ValueError(f"{path}: no {cls.config_file}; not a {cls.__name__} folder")
        return cls.config_class.model_validate_json(file.read_text())

    def _saved_parts(self) -> dict[str, nn.Module | None]:
        """Modules saved beside the backbone as safetensors files (None: absent)."""
        return {}

    def _apply_dropout(self, p: float) -> None:
        set_dropout(self, p)

    # ---- the one path ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, random_init: bool = False, seed: int = 0,
                        dtype: torch.dtype | None = None, **overrides):
        """A preset name, a folder from `save_pretrained`, or a Hugging Face model id.
        `overrides` set config fields; None means "not set" (as in a YAML without the key)."""
        path = Path(name_or_path)
        given = {k: v for k, v in overrides.items() if v is not None}
        with torch.random.fork_rng():  # random init: the same weights for the same seed, every call
            torch.manual_seed(seed)
            if path.is_dir():
                config = cls.config_class.model_validate({**cls._saved_config(path).model_dump(), **given})
                model = cls(cls._load_backbone(path, dtype), AutoTokenizer.from_pretrained(path), config)
                load_parts(path, model._saved_parts())
            else:
                config = cls.config_class.model_validate({**cls._preset_config(str(name_or_path), random_init),
                                                          **given})
                model = cls(*cls._build_backbone(config, dtype), config)
        if config.dropout is not None:
            model._apply_dropout(config.dropout)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Backbone (safetensors + config.json), tokenizer, our config file, extra parts."""
        return save_folder(path, self.backbone, self.tokenizer, self.config, self.config_file, self._saved_parts())
