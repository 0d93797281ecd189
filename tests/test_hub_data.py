"""hf:// data files, offline, against a local hub cache laid out as huggingface_hub writes it:
``hub/datasets--llm-blender--mix-instruct/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> blob}``,
holding the mix-instruct repo's main-branch files and fields."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from urg_ray.data import DataError, iter_json, read_records
from urg_ray.hub_data import local_path, parse_hub_uri

COMMIT = "c1e5d4f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2"
REPO_FILES = {"train": "train_data_prepared.jsonl", "validation": "val_data_prepared.jsonl",
              "test": "test_data_prepared.jsonl"}
ROOT = Path(__file__).resolve().parents[1]


def hub_record(split: str, i: int, cmp_results: bool) -> dict:
    """A record with the fields of the hub files (the scores every candidate carries there)."""
    models = ["oasst-sft-4-pythia-12b-epoch-3.5", "koala-7B-HF", "vicuna-13b-1.1"]
    candidates = [{"decoding_method": "top_p_sampling", "model": m, "text": f"{split} answer {i}.{j}",
                   "scores": {"logprobs": -0.1 * j, "rougeL": 0.2, "rouge2": 0.1, "rougeLsum": 0.2, "rouge1": 0.3,
                              "bleu": 5.0 + j, "bertscore": 0.7, "bleurt": -0.4, "bartscore": -3.0 - j}}
                  for j, m in enumerate(models)]
    cmp = json.dumps({f"{models[0]},{models[1]}": "A is better"}) if cmp_results else "null"
    return {"id": f"unified_chip2/{split}{i}", "instruction": "", "input": f"{split} question {i}?",
            "output": f"{split} reference {i}", "candidates": candidates, "cmp_results": cmp}


def write_cached_repo(hub_cache: Path, files: dict[str, str]) -> Path:
    """A snapshot of the dataset repo in `hub_cache`, as `snapshot_download` leaves it; returns the snapshot."""
    repo = hub_cache / "datasets--llm-blender--mix-instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, text in files.items():
        blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.write_text(text)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def mix_instruct_files(test_text: str | None = None) -> dict[str, str]:
    files = {"README.md": "---\nlicense: mit\n---\n# MixInstruct\n", ".gitattributes": "*.jsonl filter=lfs\n"}
    for split, name in REPO_FILES.items():
        files[name] = "".join(json.dumps(hub_record(split, i, split == "test")) + "\n" for i in range(3))
    if test_text is not None:
        files[REPO_FILES["test"]] = test_text
    return files


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub reading `tmp_path/hub` with the network off (as HF_HUB_CACHE + HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_splits_of_the_cached_repo_read_as_records_offline(tmp_path):
    """The user's path: HF_HOME + HF_HUB_OFFLINE in the environment of a fresh process."""
    write_cached_repo(tmp_path / "hf" / "hub", mix_instruct_files())
    uris = ["hf://llm-blender/mix-instruct/train", "hf://llm-blender/mix-instruct/validation",
            "hf://llm-blender/mix-instruct/dev", "hf://llm-blender/mix-instruct/test",
            f"hf://datasets/llm-blender/mix-instruct@{COMMIT}/test_data_prepared.jsonl"]
    script = ("import json, sys\nfrom urg_ray.data import read_records\n"
              "print(json.dumps([[r.model_dump() for r in read_records(u)] for u in sys.argv[1:]]))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script, *uris], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    train, val, dev, test, pinned = json.loads(proc.stdout)
    assert [r["id"] for r in train] == [f"unified_chip2/train{i}" for i in range(3)]
    assert val == dev and [r["input"] for r in val] == [f"validation question {i}?" for i in range(3)]
    assert test == pinned
    assert test[2] == hub_record("test", 2, cmp_results=True)  # every field mapped as stored
    assert json.loads(test[0]["cmp_results"]) == {"oasst-sft-4-pythia-12b-epoch-3.5,koala-7B-HF": "A is better"}
    assert train[0]["cmp_results"] == "null"


def test_a_bad_hub_record_names_the_file_line_and_field(offline_hub):
    bad = hub_record("test", 1, True)
    del bad["candidates"][2]["text"]
    lines = [json.dumps(hub_record("test", 0, True)), json.dumps(bad), '{"id": "torn", "output": ']
    snapshot = write_cached_repo(offline_hub, mix_instruct_files("\n".join(lines) + "\n"))
    with pytest.raises(DataError) as err:
        read_records("hf://llm-blender/mix-instruct/test")
    assert str(err.value).startswith("hf://llm-blender/mix-instruct/test:2: field 'candidates.2.text'")
    # a JSON error is found by the reader of the cached copy, which names that file
    with pytest.raises(DataError) as err:
        list(iter_json("hf://llm-blender/mix-instruct/test"))
    assert str(err.value).startswith(f"{snapshot / 'test_data_prepared.jsonl'}:3: invalid JSON")


def test_a_split_the_repo_lacks_and_a_repo_not_cached_are_clear_errors(offline_hub):
    files = mix_instruct_files()
    del files[REPO_FILES["validation"]]
    write_cached_repo(offline_hub, files)
    assert local_path("hf://llm-blender/mix-instruct/train").name == "train_data_prepared.jsonl"
    with pytest.raises(DataError, match=r"hf://llm-blender/mix-instruct/val: no 'validation' split among"):
        read_records("hf://llm-blender/mix-instruct/val")
    with pytest.raises(DataError, match=r"hf://someone/else/test: cannot get 'someone/else'"):
        read_records("hf://someone/else/test")


def test_hub_uri_forms():
    assert parse_hub_uri("hf://llm-blender/mix-instruct/train") == ("llm-blender/mix-instruct", None, "train")
    assert parse_hub_uri("hf://datasets/a/b@v1.0/data/x.jsonl") == ("a/b", "v1.0", "data/x.jsonl")
    with pytest.raises(DataError, match="expected hf://owner/name"):
        parse_hub_uri("hf://llm-blender/mix-instruct")
    assert local_path("data/x.jsonl") == Path("data/x.jsonl")  # local paths pass through untouched
