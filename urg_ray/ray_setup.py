"""How the jobs and the overhead benchmark start Ray quietly: Ray's processes log warnings only on
the console; their full logs stay in Ray's log folder."""

from __future__ import annotations

from typing import Any


def quiet_init_kwargs(verbose: bool = False, local: bool = True) -> dict[str, Any]:
    """`ray.init` keyword arguments: none when `verbose`. A `local` Ray also gets a runtime env that
    hides deprecation warnings inside Ray's own actors (Ray Train's dataset manager: not the user's
    to fix) and Ray Data's progress logs; a driver connecting to a cluster keeps its job's runtime env."""
    import ray

    if verbose:
        return {}
    quiet: dict[str, Any] = {"logging_config": ray.LoggingConfig(log_level="WARNING")}
    if local:
        quiet["runtime_env"] = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning",
                                             "RAY_DATA_LOG_LEVEL": "WARNING"}}
    return quiet
