"""urg_ray/ray_setup.py: the keyword arguments the jobs (jobs/_cli.py start_ray) and the overhead
benchmark (urg_ray.overhead.ray_session) give `ray.init`, recorded by a stand-in: no Ray starts."""

import pytest
import ray

from urg_ray.overhead import ray_session

from _cli import start_ray

WARNINGS_ONLY = ray.LoggingConfig(log_level="WARNING")
QUIET_ENV = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning", "RAY_DATA_LOG_LEVEL": "WARNING"}}


@pytest.fixture()
def inits(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_a_jobs_local_ray_is_quiet_unless_verbose(inits, capsys):
    start_ray(num_cpus=3)
    start_ray(verbose=True, num_cpus=3)
    assert inits == [{"address": "local", "num_cpus": 3, "logging_config": WARNINGS_ONLY, "runtime_env": QUIET_ENV},
                     {"address": "local", "num_cpus": 3}]
    assert capsys.readouterr().out.count("[ray] local Ray started") == 2


def test_a_job_inside_ray_job_submit_keeps_its_jobs_runtime_env(inits, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    start_ray()
    assert inits == [{"address": "http://127.0.0.1:8265", "logging_config": WARNINGS_ONLY}]


def test_the_overhead_benchmark_starts_ray_as_a_quiet_job_does(inits):
    with ray_session(num_cpus=2):
        pass
    start_ray(num_cpus=2)
    assert inits[0] == inits[1] == {"address": "local", "num_cpus": 2, "logging_config": WARNINGS_ONLY,
                                    "runtime_env": QUIET_ENV}
