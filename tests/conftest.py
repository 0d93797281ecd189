import socket
import sys

import pytest
import torch

from urg_ray import URG
from urg_ray.data import Record

torch.set_num_threads(2)

_RUNNING: dict = {}  # the test being set up or run, for the Ray guard below


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _RUNNING.update(test=item, started_ray=False)  # before any fixture: module fixtures count too


def pytest_configure(config):
    """`pytest -m "not slow"` must start no Ray (and so no Serve, Ray Train/DeepSpeed or Ray Data
    vLLM): `ray.init`, which every one of them goes through, refuses to run for a test not marked slow."""
    import ray

    original = ray.init

    def init_only_in_slow_tests(*args, **kwargs):
        test = _RUNNING.get("test")
        if test is not None and test.get_closest_marker("slow") is None:
            _RUNNING["started_ray"] = True
            raise RuntimeError(f"{test.nodeid} starts Ray but is not marked @pytest.mark.slow")
        _RUNNING["ray_in_process"] = True  # see pytest_unconfigure
        return original(*args, **kwargs)

    ray.init = init_only_in_slow_tests


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A session that started Ray in this process leaves with pytest's own status, without the
    interpreter's finalisation (every test, report and plugin has finished by now): once, a full
    `make test` passed 448 tests and then died of SIGSEGV in finalisation (stack not kept). Ray's
    own forced worker exit skips clean-up too (`QuickExit`: `_Exit`). A session without Ray, like
    `-m "not slow"`, finalises normally (no crash seen), so a crash there is not hidden.
    URG_TEST_FINALIZE=1 finalises after Ray too, to catch the crash (ulimit -c; gdb on the core)."""
    import os

    status = getattr(config, "_urg_exitstatus", None)
    if status is not None and _RUNNING.get("ray_in_process") and not os.environ.get("URG_TEST_FINALIZE"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._urg_exitstatus = exitstatus


@pytest.fixture(autouse=True)
def ray_only_in_slow_tests(request):
    """Fails the test even when the code under test swallowed the guard's error."""
    yield
    if _RUNNING.get("started_ray"):
        pytest.fail(f"{request.node.nodeid} starts Ray but is not marked @pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """A job run in-process (main()) may start Ray; the next module must get a clean slate."""
    yield
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="module")
def serve_app():
    """Starts a module's one Serve app on loopback: ``serve_app(args, name)`` (`build_app` args) gives
    its URL once ``/healthz`` says ready (or `ready(reply)` does, `serve.healthz.wait_ready`).
    Ray gets 2 logical CPUs, so the deployments ask for fractions; Serve and Ray stop after the module."""
    started = False

    def start(args: dict, name: str, ready=None) -> str:
        nonlocal started
        ray = pytest.importorskip("ray")
        from ray import serve

        from serve.app import build_app
        from serve.healthz import is_ready, wait_ready

        with socket.socket() as s:  # Serve's proxy cannot bind port 0 and report it
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=name, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, ready=ready or is_ready)
        return url

    yield start
    if started:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny() -> URG:
    """The tiny preset, built once per session, in eval mode (no dropout)."""
    return URG.from_pretrained("tiny").eval()


def make_record(i: int, n: int = 4, answer: str = "the cat sat on the mat", scores=None) -> Record:
    """A small hand-made MixInstruct record; candidate j has bleu 10*j (the last is best)."""
    return Record(
        id=f"r{i}", instruction=f"question {i}: where did the cat sit?", input="", output=answer,
        candidates=[
            {"model": f"m{j}", "text": f"answer {j} " + " ".join(answer.split()[: j + 1]),
             "scores": scores[j] if scores else {"bleu": 10.0 * j}}
            for j in range(n)
        ],
    )
