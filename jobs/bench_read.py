"""Time and peak memory of reading a large MixInstruct file (JSONL and JSON array), streamed and as a list.

    python jobs/bench_read.py                 # 1 GB files in /tmp, deleted afterwards
    python jobs/bench_read.py --mb 200

Each measurement runs in a fresh process and reports its own peak RSS (ru_maxrss), with the RSS
of the same process after imports, before reading, as the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


MEASURE = """
import resource, sys, time
from urg_ray.data import iter_records, read_records
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
n = sum(1 for _ in iter_records(sys.argv[1])) if sys.argv[2] == "iter_records" else len(read_records(sys.argv[1]))
print(n, time.perf_counter() - start, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def record(i: int) -> dict:
    """A MixInstruct-sized record (12 candidates of ~200 words, some Unicode line separators)."""
    words = "the quick brown fox jumps over a lazy dog; caf\u00e9 \u2028 \U0001f600 answer".split(" ")

    def text(j: int) -> str:
        return " ".join(words[(i + j + k) % len(words)] for k in range(200))

    return {"id": f"bench/{i}", "instruction": "Explain the following.", "input": text(0)[:400], "output": text(1),
            "candidates": [{"decoding_method": "top_p_sampling", "model": f"model-{j}", "text": text(j),
                            "scores": {"bleu": 1.5 * j, "rougeL": 0.01 * j, "bartscore": -3.0 - j}} for j in range(12)],
            "cmp_results": "null"}


def make_file(path: Path, size: int) -> int:
    """Write records until `path` holds `size` bytes; JSONL for .jsonl, else a JSON array (as write_records does)."""
    jsonl, n, written = path.suffix == ".jsonl", 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            text = json.dumps(record(n), ensure_ascii=False, indent=None if jsonl else 1)
            chunk = text + "\n" if jsonl else ("[\n" if n == 0 else ",\n") + text
            written += len(chunk.encode("utf-8"))
            f.write(chunk)
            n += 1
        if not jsonl:
            f.write("\n]\n")
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of each file in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for name in ("bench.jsonl", "bench.json"):
            path = Path(tmp) / name
            start = time.perf_counter()
            n = make_file(path, args.mb * 2**20)
            print(f"{name}: {path.stat().st_size / 2**20:.0f} MiB, {n} records "
                  f"(made in {time.perf_counter() - start:.0f} s)", flush=True)
            for how in ("iter_records", "read_records"):
                out = subprocess.run([sys.executable, "-c", MEASURE, str(path), how], capture_output=True, text=True,
                                     check=True, cwd=Path(__file__).resolve().parents[1])
                count, seconds, base_kb, peak_kb = out.stdout.split()
                print(f"  {how:12s}: {int(count)} records in {float(seconds):.1f} s "
                      f"({path.stat().st_size / 2**20 / float(seconds):.0f} MiB/s); "
                      f"peak RSS {int(peak_kb) / 2**10:.0f} MiB "
                      f"({(int(peak_kb) - int(base_kb)) / 2**10:.0f} MiB above "
                      f"the {int(base_kb) / 2**10:.0f} MiB after imports)",
                      flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
