"""Data files on the Hugging Face hub: ``hf://owner/name[@revision]/split`` as a local file.

    data.train_file: hf://llm-blender/mix-instruct/train       # train_data_prepared.jsonl
    data.dev_file:   hf://llm-blender/mix-instruct/validation  # val_data_prepared.jsonl (also: val, dev)
    data.test_file:  hf://llm-blender/mix-instruct/test        # test_data_prepared.jsonl, with cmp_results
    hf://llm-blender/mix-instruct@<commit>/test_data_prepared.jsonl   # one file, a pinned revision

A split name maps to the repo's files by `datasets`' own rules (`get_data_patterns`: "val" and
"dev" name the validation split, ...); the files come through `huggingface_hub`'s cache
(`HF_HOME`, or `HF_HUB_CACHE`; `HF_HUB_OFFLINE=1` reads a cached snapshot without the network).
The cached file is then read like a local one (`urg_ray.data.iter_json`): streamed, validated,
errors naming ``file:line: field``. `datasets.load_dataset` is not used to read the records: its
Arrow conversion would turn each candidate's `scores` dict into one struct padded with nulls and
lose the line numbers, and copy the 1.38 GB train file into a second cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
DATA_EXTENSIONS = [".jsonl", ".json"]
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "dev": "validation",
               "test": "test"}


def is_hub_uri(path: str | os.PathLike) -> bool:
    return str(path).startswith(HUB_SCHEME)


def parse_hub_uri(uri: str) -> tuple[str, str | None, str]:
    """(repo_id, revision or None, split or file path) of ``hf://[datasets/]owner/name[@rev]/target``."""
    from urg_ray.data import DataError

    parts = uri[len(HUB_SCHEME):].strip("/").split("/")
    if parts and parts[0] == "datasets":  # huggingface_hub's own fsspec form
        parts = parts[1:]
    if len(parts) < 3 or not all(parts):
        raise DataError(f"{uri}: expected hf://owner/name[@revision]/SPLIT or .../FILE, "
                        f"e.g. hf://llm-blender/mix-instruct/train")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def local_path(path: str | os.PathLike) -> Path:
    """`path` itself, or for an ``hf://`` URI the cached local copy of its file (downloaded once)."""
    if not is_hub_uri(path):
        return Path(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from urg_ray.data import DataError

    uri = str(path)
    repo_id, revision, target = parse_hub_uri(uri)
    split = SPLIT_NAMES.get(target)
    # only this split's files are fetched (a superset by keyword; `datasets` picks exactly below)
    allow = [f"*{kw}*" for kw in _split_keywords(split)] if split else [target]
    try:
        snapshot = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=allow)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise DataError(f"{uri}: cannot get {repo_id!r} from the hub or its cache: {err}") from None
    files = _split_files(snapshot, split, uri) if split else [Path(snapshot) / target]
    if len(files) != 1 or not files[0].is_file():
        found = ", ".join(f.name for f in files) or "no file"
        raise DataError(f"{uri}: expected one data file, found {found} in {snapshot}; name the file, "
                        f"e.g. hf://{repo_id}/{files[0].name if files else 'FILE.jsonl'}")
    log.info("%s -> %s", uri, files[0])
    return files[0]


def _split_keywords(split: str) -> list[str]:
    from datasets.data_files import SPLIT_KEYWORDS

    return next(kws for name, kws in SPLIT_KEYWORDS.items() if str(name) == split)


def _split_files(snapshot: str, split: str, uri: str) -> list[Path]:
    """The files `datasets` assigns to `split` in a (partial) snapshot folder."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    from urg_ray.data import DataError

    try:
        patterns = get_data_patterns(snapshot)
    except EmptyDatasetError:
        patterns = {}
    if split not in patterns:
        raise DataError(f"{uri}: no {split!r} split among the files of {snapshot} "
                        f"({sorted(p.name for p in Path(snapshot).iterdir())})")
    files = DataFilesDict.from_patterns({split: patterns[split]}, base_path=snapshot,
                                        allowed_extensions=DATA_EXTENSIONS)[split]
    return sorted(Path(f) for f in files)
