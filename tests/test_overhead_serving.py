"""The serving pair loads in-process the URG that serve/app.yaml's app serves (jobs/bench_overhead.py)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("ray")
from bench_overhead import ServeLoad  # noqa: E402


def write_app(tmp_path: Path, urg: dict) -> Path:
    app = yaml.safe_load((ROOT / "serve" / "app.yaml").read_text())
    app["applications"][0]["args"]["urg"] = urg
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    return path


@pytest.mark.parametrize("present, served", [
    (["run/model", "train/model"], "run/model"),  # the app's own checkpoint
    (["train/model"], "train/model"),  # its fallback checkpoint
    ([], "tiny"),  # neither: the fallback preset
])
def test_the_in_process_side_loads_the_checkpoint_the_app_serves(tmp_path, monkeypatch, present, served):
    monkeypatch.chdir(tmp_path)  # the YAML's folders are relative to where the app starts
    for folder in present:
        (tmp_path / folder).mkdir(parents=True)
    config = write_app(tmp_path, {"model": "run/model", "fallback_model": "train/model", "fallback_preset": "tiny"})
    expected = served if served == "tiny" else str((tmp_path / served).resolve())
    assert ServeLoad(str(config)).served_urg() == expected


def test_a_urg_override_is_what_both_sides_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    config = write_app(tmp_path, {"model": "run/model", "fallback_preset": "tiny"})
    assert ServeLoad(str(config), urg={"model": "other"}).served_urg() == str((tmp_path / "other").resolve())
