"""One candidate-LLM layer for jobs and Serve: `base` (interface, registry), `spec` (the model spec),
and one module per engine. See `urg_ray.llms.base`."""

from urg_ray.llms.base import ENGINES, LLM, Answer, Sampling, build, register  # noqa: F401
