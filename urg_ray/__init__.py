"""urg_ray: ensemble N LLMs with URG (rank + fuse in one encoder-decoder), distributed with Ray."""

from typing import TYPE_CHECKING

__all__ = ["URG", "FusionResult", "RankResult"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from urg_ray.model import URG, FusionResult, RankResult


def __getattr__(name: str):
    # Lazy: `import urg_ray.metrics` or `urg_ray.synthetic` should not pay for torch/transformers.
    if name in __all__:
        from urg_ray import model

        return getattr(model, name)
    raise AttributeError(f"module 'urg_ray' has no attribute {name!r}")
