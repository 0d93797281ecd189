"""The generation journal and the durable files around it (`urg_ray.durable`, `urg_ray.generate`'s resume).

No test here starts Ray: generation runs against a fake Ray Data pipeline (`FAKE_PIPELINE`) whose
answers are a pure function of (model, prompt id), so an interrupted-and-resumed run can be
compared byte for byte with an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import urg_ray.durable as durable
import urg_ray.generate as gen
from urg_ray.data import DataError, read_records, write_records
from urg_ray.durable import Journal, Locked, atomic_write, exclusive_lock, replace_folder
from urg_ray.generate import Prompt, _journal_candidate, _load_existing, question_hash
from urg_ray.generate_config import GenerateConfig, ModelSpec

from test_data import random_record

ROOT = Path(__file__).resolve().parents[1]

# Replaces Ray in a job process: one row per batch, text = answer(model, id); each call is logged.
FAKE_PIPELINE = textwrap.dedent('''
    import os, sys
    import numpy as np
    import ray, ray.data
    import urg_ray.generate as gen

    def answer(model, pid):
        return f"{model} \\u2192 {pid}: caf\\u00e9\\u2028\\U0001f600\\x85 \\u0436"

    class Items(list):
        pass

    class Stage:
        def __init__(self, items, spec):
            self.items, self.spec = items, spec

        def iter_batches(self, **kwargs):
            for item in self.items:
                with open(os.environ["CALLS_LOG"], "a") as log:
                    log.write(f"{self.spec.name} {item['id']}\\n")
                yield {"id": np.array([item["id"]], dtype=object),
                       "text": np.array([answer(self.spec.name, item["id"])], dtype=object),
                       "num_tokens": np.array([3]), "error": np.array([""], dtype=object),
                       "latency_s": np.array([0.0])}

    ray.init = lambda *a, **k: None
    ray.data.from_items = Items
    gen.generation_stage = lambda ds, spec, sampling: Stage(ds, spec)
''')

# Kills the job (os._exit: no clean-up, no flush) as journal entry KILL_AT is about to be appended,
# so KILL_AT - 1 entries are on disk; with TORN, part of that entry's line reaches the disk first,
# cut inside the 3-byte UTF-8 sequence of U+2192.
KILLER = textwrap.dedent('''
    import json
    import urg_ray.durable as durable
    real_append, appended = durable.Journal.append, []

    def append(self, value):
        appended.append(value)
        if len(appended) == int(os.environ["KILL_AT"]):
            if os.environ.get("TORN"):
                line = json.dumps(value, ensure_ascii=False).encode()
                with open(self.path, "ab") as f:
                    f.write(line[: line.index("\\u2192".encode()) + 1])
            os._exit(137)
        real_append(self, value)

    durable.Journal.append = append
''')
MODELS = "models=[{name: m-a, engine: transformers}, {name: m-b, engine: transformers}]"


def run_job(tmp_path: Path, out: Path, prompts: Path, **env) -> subprocess.CompletedProcess:
    """jobs/generate.py in a subprocess, on the fake pipeline (and the killer when KILL_AT is set)."""
    driver = tmp_path / "driver.py"
    driver.write_text("import os, sys\n" + FAKE_PIPELINE + (KILLER if "KILL_AT" in env else "")
                      + f"sys.path.insert(0, {str(ROOT / 'jobs')!r})\nfrom generate import main\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, str(driver), "--set", f"prompts={prompts}", "--set", MODELS,
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "CALLS_LOG": str(out) + ".calls", **env})


def calls(out: Path) -> list[str]:
    log = Path(str(out) + ".calls")
    return log.read_text().splitlines() if log.exists() else []


def write_prompts(path: Path, n: int = 5) -> Path:
    rows = [{"id": f"q{i}", "instruction": f"Question {i} \u2028 \U0001d11e?", "output": f"ref {i}\x85"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ALL_PAIRS = [f"{m} q{i}" for m in ("m-a", "m-b") for i in range(5)]  # the order the job generates them


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "out"
    done = run_job(tmp, out, write_prompts(tmp / "p.jsonl"))
    assert done.returncode == 0, done.stderr
    assert calls(out) == ALL_PAIRS
    return (out / "candidates.jsonl").read_bytes()


@pytest.mark.parametrize("k, torn", [(0, False), (3, False), (5, True)])
def test_a_killed_job_resumes_to_the_uninterrupted_output(tmp_path, uninterrupted, k, torn):
    out, prompts = tmp_path / "out", write_prompts(tmp_path / "p.jsonl")
    killed = run_job(tmp_path, out, prompts, KILL_AT=str(k + 1), **({"TORN": "1"} if torn else {}))
    assert killed.returncode == 137, killed.stderr
    journal = out / "candidates.jsonl.partial"
    assert not (out / "candidates.jsonl").exists()
    if torn:  # the torn line ends inside a UTF-8 sequence
        tail = journal.read_bytes().rsplit(b"\n", 1)[1]
        with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
            tail.decode("utf-8")
    assert (journal.read_bytes().count(b"\n") if journal.exists() else 0) == k
    first_calls = calls(out)
    assert first_calls == ALL_PAIRS[: k + 1]  # pair k + 1 was answered, never journaled

    resumed = run_job(tmp_path, out, prompts)
    assert resumed.returncode == 0, resumed.stderr
    assert calls(out)[len(first_calls):] == ALL_PAIRS[k:]  # nothing journaled is generated again
    assert ("torn last line" in resumed.stdout) == torn
    assert (out / "candidates.jsonl").read_bytes() == uninterrupted
    records = read_records(out / "candidates.jsonl")
    assert [r.id for r in records] == [f"q{i}" for i in range(5)]
    assert all([c.model for c in r.candidates] == ["m-a", "m-b"] for r in records)  # no duplicates
    assert not journal.exists() and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    from generate import main

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from urg_ray.durable import exclusive_lock
        with exclusive_lock({str(out / "candidates.jsonl")!r}):
            print("locked", flush=True)
            time.sleep(120)
        ''')], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(["--set", f"prompts={write_prompts(tmp_path / 'p.jsonl')}", "--set", MODELS,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"candidates.jsonl is being written by another run (pid {holder.pid}, lock " in err
        with pytest.raises(Locked):
            gen.generate(GenerateConfig(models=[ModelSpec(name="m", engine="transformers")]), out,
                         [Prompt("q", "Q?")])
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(out / "candidates.jsonl"):  # released with its holder
        pass


# ---- the journal itself -----------------------------------------------------------------------
def test_records_with_arbitrary_unicode_round_trip_through_the_journal(tmp_path):
    rng = random.Random(7)
    records = [random_record(rng, i) for i in range(200)]
    journal = Journal(tmp_path / "c.jsonl.partial")
    live: dict[str, dict] = {}
    for r in records:
        for c in r.candidates:
            c.model = f"{c.model}#{id(c)}"  # one candidate per model and record, as generation makes
            _journal_candidate(journal, live, Prompt(r.id, r.instruction, r.input, r.output), c.model_dump())
        journal.sync()
    journal.close()
    problems: list[str] = []
    resumed = _load_existing(tmp_path / "c.jsonl", journal.path, problems)
    assert problems == [] and resumed == live
    write_records(tmp_path / "c.jsonl", resumed.values())
    expected = [r.model_copy(update={"cmp_results": "null"}) for r in records]
    assert read_records(tmp_path / "c.jsonl") == expected


def entry(pid: str, model: str, question: str = "Q?", text: str = "t") -> dict:
    return {"prompt": {"id": pid, "instruction": question, "input": "", "output": ""},
            "prompt_sha256": question_hash(question, ""), "candidate": {"model": model, "text": text, "scores": {}}}


def test_damaged_journal_entries_are_skipped_and_reported_and_a_torn_tail_truncated(tmp_path):
    path = tmp_path / "c.jsonl.partial"
    good = [json.dumps(entry(f"p{i}", "m", text="\u00e9\u2028")).encode() for i in range(3)]
    wrong_hash = {**entry("x", "m"), "prompt_sha256": question_hash("another question", "")}
    lines = [good[0],
             json.dumps(entry("x", "m", text="caf\u00e9"), ensure_ascii=False).encode("latin-1"),  # 2: bad UTF-8
             b'{"prompt": {"id": "x"',  # 3: bad JSON
             b"[1, 2]",  # 4: wrong shape
             json.dumps({**entry("x", "m"), "candidate": {"text": "no model"}}).encode(),  # 5
             json.dumps({**entry("x", "m"),
                         "candidate": {"model": "m", "text": "t", "scores": {"bleu": None}}}).encode(),
             json.dumps(wrong_hash).encode(),  # 7
             good[1]]
    intact = b"".join(line + b"\n" for line in lines)
    path.write_bytes(intact + good[2][:-5] + b"\xe2\x86")  # 9: torn inside a UTF-8 sequence
    problems: list[str] = []
    records = _load_existing(tmp_path / "c.jsonl", path, problems)
    assert list(records) == ["p0", "p1"]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 9)]
    for problem, expected in zip(problems, ["not UTF-8", "invalid JSON", "not a journal entry",
                                            "field 'candidate.model': Field required",
                                            "field 'candidate.scores.bleu'", "'prompt_sha256' does not match",
                                            "torn last line"]):
        assert expected in problem, problem
    assert path.read_bytes().endswith(b"\xe2\x86")  # reading alone changes nothing
    _load_existing(tmp_path / "c.jsonl", path, [], repair=True)
    assert path.read_bytes() == intact
    with Journal(path) as journal:
        journal.append(json.loads(good[2]))
        journal.sync()
    assert list(_load_existing(tmp_path / "c.jsonl", path, [])) == ["p0", "p1", "p2"]


# ---- generate() on a fake pipeline, in process -------------------------------------------------
@pytest.fixture
def fake_engine(monkeypatch):
    """generate() without Ray: each model answers "<model>: <question>"; returns the (model, id) calls."""
    import numpy as np
    import ray.data

    made: list[tuple[str, str]] = []

    def stage(items, spec, sampling):
        class Results:
            def iter_batches(self, **kwargs):
                for item in items:
                    made.append((spec.name, item["id"]))
                    yield {"id": np.array([item["id"]], dtype=object),
                           "text": np.array([f"{spec.name}: {item['prompt']}"], dtype=object)}
        return Results()

    monkeypatch.setattr(ray.data, "from_items", list)
    monkeypatch.setattr(gen, "generation_stage", stage)
    return made


CFG = GenerateConfig(models=[ModelSpec(name="m", engine="transformers")], prompt_template="{question}")


def test_a_changed_prompt_is_generated_again_and_reported(tmp_path, fake_engine, caplog):
    prompts = [Prompt("a", "First?"), Prompt("b", "Second?", output="ref")]
    gen.generate(CFG, tmp_path, prompts)
    changed = [Prompt("a", "A new question?"), Prompt("b", "Second?", output="new ref")]
    summary = gen.generate(CFG, tmp_path, changed)
    assert fake_engine == [("m", "a"), ("m", "b"), ("m", "a")] and summary["changed_prompts"] == ["a"]
    assert "1 prompts changed since their candidates were generated" in caplog.text
    records = read_records(tmp_path / "candidates.jsonl")
    assert [(r.instruction, r.output, r.candidates[0].text) for r in records] == [
        ("A new question?", "", "m: A new question?"), ("Second?", "new ref", "m: Second?")]
    # the same through the journal: an interrupted run's entry for the old question is not reused
    with Journal(tmp_path / "candidates.jsonl.partial") as journal:
        _journal_candidate(journal, {}, Prompt("b", "Second?"), {"model": "m2", "text": "old", "scores": {}})
    two = CFG.model_copy(update={"models": [*CFG.models, ModelSpec(name="m2", engine="transformers")]})
    gen.generate(two, tmp_path, [Prompt("a", "A new question?"), Prompt("b", "Changed again?")])
    assert fake_engine[3:] == [("m", "b"), ("m2", "a"), ("m2", "b")]


def test_duplicate_prompt_ids_are_an_error_naming_them(tmp_path, fake_engine):
    with pytest.raises(DataError, match=r"duplicate prompt ids: \['a', 'c'\]"):
        gen.generate(CFG, tmp_path, [Prompt(i, f"Q {n}?") for n, i in enumerate("abcac")])
    assert fake_engine == [] and not (tmp_path / "candidates.jsonl").exists()


class FullDiskFile:
    """A file object whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_during_the_final_write_keeps_the_previous_output(tmp_path, fake_engine, monkeypatch, where):
    prompts = [Prompt(f"p{i}", f"Question {i}?") for i in range(3)]
    gen.generate(CFG, tmp_path, prompts[:2])
    out = tmp_path / "candidates.jsonl"
    before = out.read_bytes()

    def is_temp(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")

    if where == "write":
        real_open = open
        monkeypatch.setattr(durable, "open", lambda fd, *a, **k: FullDiskFile(real_open(fd, *a, **k), 40)
                            if isinstance(fd, int) and is_temp(fd) else real_open(fd, *a, **k), raising=False)
    else:
        real_fsync = os.fsync

        def fsync(fd):
            if is_temp(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)
        monkeypatch.setattr(durable.os, "fsync", fsync)
    with pytest.raises(OSError) as failure:
        gen.generate(CFG, tmp_path, prompts)
    assert failure.value.errno == errno.ENOSPC
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates.jsonl", "candidates.jsonl.lock",
                                                          "candidates.jsonl.partial", "generate_summary.json"]
    monkeypatch.undo()
    import ray.data  # the fake engine again, after undo()

    monkeypatch.setattr(ray.data, "from_items", list)
    monkeypatch.setattr(gen, "generation_stage", lambda items, spec, s: pytest.fail("regenerated"))
    assert gen.generate(CFG, tmp_path, prompts)["records"] == 3  # from the journal, nothing generated again
    assert [r.candidates[0].text for r in read_records(out)] == [f"m: Question {i}?" for i in range(3)]
    assert fake_engine == [("m", "p0"), ("m", "p1"), ("m", "p2")]


def test_atomic_write_leaves_the_old_file_when_the_block_fails(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("new")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with atomic_write(path) as f:
        f.write("new \u2028")
    assert path.read_text(encoding="utf-8") == "new \u2028" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_model_export_replaces_the_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    old, new, target = tmp_path / "old", tmp_path / "new", tmp_path / "out" / "model"
    for folder, text in ((old, "old weights"), (new, "new weights")):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "w.bin").write_text(text)
    (old / "stale.json").write_text("{}")
    replace_folder(old, target)
    replace_folder(new, target)
    assert sorted(p.name for p in target.rglob("*")) == ["sub", "w.bin"]
    assert (target / "sub" / "w.bin").read_text() == "new weights"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # nothing left beside it

    def full_disk(src, dst, **kwargs):
        Path(dst, "sub").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full_disk)
    with pytest.raises(OSError, match="No space left"):
        replace_folder(old, target)
    assert (target / "sub" / "w.bin").read_text() == "new weights"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]
