import pytest
import torch

from urg_ray import URG
from urg_ray.data import Record

torch.set_num_threads(2)


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """A job run in-process (main()) may start Ray; the next module must get a clean slate."""
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


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
