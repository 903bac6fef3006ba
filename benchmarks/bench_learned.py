"""Benchmark: the learned soup's peak memory and time per epoch, streaming against in-memory.

For k = 4, 8, 16 ingredients of one model (a wide ToyMLP, fine-tuned copies simulated as small
perturbations of one init), each configuration runs in its own subprocess, which reports its peak
resident memory (``VmHWM`` from /proc, i.e. ``ru_maxrss``) and the recipe's measured seconds per
epoch (the fastest of ``--epochs``, to damp noise from a busy machine). The target: in streaming mode, peak RSS at k = 16 within 1.25x of k = 4.

Writes ``benchmarks/results/learned.csv`` and prints a markdown table::

    python benchmarks/bench_learned.py            # hidden 4096 (~64 MB model), 2 epochs
    python benchmarks/bench_learned.py --hidden 1024 --ks 2,4   # quick
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "learned.csv"
FIELDS = [
    "mode",
    "k",
    "model_mb",
    "baseline_rss_mb",
    "peak_rss_mb",
    "fit_rss_mb",
    "seconds_per_epoch",
    "steps_per_epoch",
]


def _rss_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (ru_maxrss when /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(folder: Path, k: int, mode: str, hidden: int, epochs: int) -> dict:
    """One configuration, in a fresh process: fit the learned soup, report memory and time."""
    import torch

    import modelsoup
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.recipes import RecipeContext, get_recipe
    from modelsoup.tasks.toy import ToyMLP, make_task

    torch.manual_seed(0)
    task = dataclasses.replace(make_task(), build_model=functools.partial(ToyMLP, hidden=hidden))
    ings = modelsoup.load_ingredients([str(folder / f"m{i:02d}.safetensors") for i in range(k)])
    ev = Evaluator(task, cache_dir=folder / "cache", device="cpu", progress=False)
    baseline = _rss_mb("VmRSS")
    recipe = get_recipe("learned")(mode=mode, epochs=epochs)
    decision = recipe.decide(ings, RecipeContext(evaluator=ev))
    peak = _rss_mb("VmHWM")
    return {
        "mode": mode,
        "k": k,
        "model_mb": round(ings[0].nbytes / 2**20, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "fit_rss_mb": round(peak - baseline, 1),
        "seconds_per_epoch": round(min(decision.info["epoch_seconds"]), 3),
        "steps_per_epoch": decision.info["steps"] // max(epochs, 1),
    }


def write_ingredients(folder: Path, k: int, hidden: int) -> None:
    """``k`` perturbed copies of one ToyMLP init, as safetensors."""
    import torch
    from safetensors.torch import save_file

    from modelsoup.tasks.toy import ToyMLP

    torch.manual_seed(0)
    init = ToyMLP(hidden=hidden).state_dict()
    for i in range(k):
        g = torch.Generator().manual_seed(i + 1)
        sd = {}
        for name, t in init.items():
            if t.is_floating_point() and "running" not in name:
                t = t + 0.02 * t.std().clamp_min(1e-3) * torch.randn(t.shape, generator=g)
            sd[name] = t.contiguous()
        save_file(sd, folder / f"m{i:02d}.safetensors")


def run(ks: list[int], hidden: int, epochs: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_learned_") as tmp:
        folder = Path(tmp)
        write_ingredients(folder, max(ks), hidden)
        env = {**os.environ, "MODELSOUP_CACHE_DIR": str(folder / "cache"), "HF_HUB_OFFLINE": "1"}
        for mode in ("streaming", "memory"):
            for k in ks:
                cmd = [sys.executable, __file__, "--child", str(folder), "--k", str(k)]
                cmd += ["--mode", mode, "--hidden", str(hidden), "--epochs", str(epochs)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{mode} k={k} failed:\n{out.stderr}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"  {mode:9s} k={k:2d}: peak {row['peak_rss_mb']:.0f} MB, "
                    f"{row['seconds_per_epoch']:.2f} s/epoch",
                    file=sys.stderr,
                )
    return rows


def table(rows: list[dict]) -> str:
    by = {(r["mode"], r["k"]): r for r in rows}
    ks = sorted({r["k"] for r in rows})
    k0 = ks[0]
    s0 = by[("streaming", k0)]
    lines = [
        f"| k | streaming peak RSS (MB) | vs k={k0} | above baseline (MB) "
        "| in-memory peak RSS (MB) | streaming s/epoch | in-memory s/epoch "
        "| streaming / in-memory time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in ks:
        s, m = by[("streaming", k)], by[("memory", k)]
        lines.append(
            f"| {k} | {s['peak_rss_mb']:.0f} | {s['peak_rss_mb'] / s0['peak_rss_mb']:.2f}x "
            f"| {s['fit_rss_mb']:.0f} | {m['peak_rss_mb']:.0f} | {s['seconds_per_epoch']:.2f} "
            f"| {m['seconds_per_epoch']:.2f} "
            f"| {s['seconds_per_epoch'] / m['seconds_per_epoch']:.2f}x |"
        )
    model_mb = rows[0]["model_mb"]
    steps = rows[0]["steps_per_epoch"]
    lines.append("")
    lines.append(
        f"Model: ToyMLP, {model_mb} MB of fp32 weights per ingredient; {steps} steps per epoch "
        "(400 held-out examples, batch 128); one subprocess per row, peak RSS = VmHWM; "
        "s/epoch = the fastest epoch."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="4,8,16", help="numbers of ingredients (comma-separated)")
    p.add_argument("--hidden", type=int, default=4096, help="ToyMLP hidden width (model size)")
    p.add_argument(
        "--epochs", type=int, default=2, help="epochs per configuration (the fastest is reported)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="CSV to write")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="streaming", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.k, args.mode, args.hidden, args.epochs)))
        return
    ks = [int(x) for x in args.ks.split(",")]
    rows = run(ks, args.hidden, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(table(rows))
    s = {r["k"]: r for r in rows if r["mode"] == "streaming"}
    ratio = s[max(ks)]["peak_rss_mb"] / s[min(ks)]["peak_rss_mb"]
    verdict = "meets" if ratio <= 1.25 else "MISSES"
    print(
        f"\nstreaming peak RSS, k={max(ks)} vs k={min(ks)}: {ratio:.2f}x ({verdict} the 1.25x target)"
    )


if __name__ == "__main__":
    main()
