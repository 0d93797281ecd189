"""Train URG (or a baseline) on Ray Train + DeepSpeed ZeRO-2.

    python jobs/train.py                                   # tiny preset, synthetic data, local Ray, 2 workers
    python jobs/train.py --config jobs/configs/flan-t5-xl.yaml --set data.train_file=/data/mix/train.jsonl
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/train.py --config ...

A re-run with the same train.name and train.storage_path resumes from its last checkpoint. It
is refused (exit 2, naming what changed) when the training data, the worker count or a config
field that decides the data order or the optimisation changed; --set train.resume_mismatch_ok=true
resumes anyway. Every training record is checked first: a bad one exits 2 naming file:line:field.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, start_ray  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_out="outputs/train").parse_args(argv)
    try:  # everything that can be wrong with the inputs fails here, before Ray starts
        cfg = job_config(args)
        from urg_ray.hub_data import local_path
        from urg_ray.train import fit, prepare_data

        for split in ("train_file", "dev_file"):  # hf://... -> its cached copy, fetched once, here
            setattr(cfg.data, split, str(local_path(getattr(cfg.data, split))))

        records = prepare_data(cfg, source=args.config or "<defaults>")
    except INPUT_ERRORS as err:
        return bad_input(err)
    print(f"[train] method {cfg.method}, preset {cfg.model.preset}: {len(records['train'])} train / "
          f"{len(records['dev'])} dev records, {cfg.train.num_workers} workers", flush=True)
    # the workers' CPUs plus one spare; records reach workers by ray.put, each step's picked by urg_ray/data_order.py
    start_ray(args.verbose,
              num_cpus=max(os.cpu_count() or 1, int(cfg.train.num_workers * cfg.train.cpus_per_worker) + 1))
    summary = fit(cfg, records, args.out, verbose=args.verbose)
    print(f"[train] done in {summary['wall_s']} s, {summary['samples_per_s']:.1f} samples/s")
    print(f"[train] exported checkpoint ({summary['export']}): {summary['exported_checkpoint']}")
    print("[train] its dev metrics: "
          f"{json.dumps({k: round(v, 4) for k, v in summary['exported_metrics'].items() if isinstance(v, float)})}")
    print(f"[train] model: {summary['model_dir']}  "
          "(from_pretrained of its class loads it; urg_ray.protocol.load_model any)")
    print(f"[train] summary: {Path(args.out) / 'train_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
