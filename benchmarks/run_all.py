"""Run the whole benchmark suite and write docs/benchmarks.md and benchmarks/results/*.csv.

    python benchmarks/run_all.py            # full sizes (k = 8 x 100M parameters, ...), ~30 min
    python benchmarks/run_all.py --quick    # small sizes, a few minutes
    python benchmarks/run_all.py --only uniform,coldstart

Generated checkpoints, virtualenvs and outputs go to $MODELSOUP_BENCH_DIR (default
/tmp/modelsoup-bench), never into the repository. ``make bench`` runs the full suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_coldstart  # noqa: E402
import bench_distributed  # noqa: E402
import bench_eval  # noqa: E402
import bench_greedy  # noqa: E402
import bench_sweep  # noqa: E402
import bench_uniform  # noqa: E402
from common import HERE, PYTHON, REPO, RESULTS, THREADS, Table, bench_dir, loadavg, log, machine  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
SAVED = RESULTS / "sections.json"  # every section's last tables, so --only can rerun a few

OPTIMIZATIONS = """
What changed in the library to reach these numbers (each found by profiling `cook uniform`, k = 8
x 102M parameters, with py-spy and `perf_counter` instrumentation). Before the changes, one
measurement on this machine under a load average of about 8 gave 13.2 s and 3.47 GB peak RSS
with a warm digest cache, 18.4 s cold (mergekit: 10.8 s, 4.0 GB); the tables above are after.

| where | what | why |
| --- | --- | --- |
| `ingredients/ingredient.py` `Ingredient.get` | each tensor is its own copy-on-write `mmap` of the file's bytes (`torch.frombuffer`), released with the tensor; headers are parsed once by our reader, whose offsets are kept | `safe_open` handles kept every page read so far mapped: peak RSS grew with k (3.5 GB at k = 8); the header was also parsed twice |
| `engine.py` `_weighted_sum` | `torch.mul(t, w)` for the first ingredient, `add_(t, alpha=w)` straight from the mapped (fp16/bf16/fp32) tensor | no converted copies; one pass per ingredient |
| `engine.py` `mix` | accumulate on one intra-op thread (restored before each tensor is yielded) | memory-bound work; with two threads each op waited for the preempted thread whenever the machine was busy (mixing took 10-14 s instead of 1.6 s under load) and left no core to the writer |
| `engine.py` `_all_finite` | NaN/Inf check as `isfinite(t.sum())`, the exact check only when that sum is not finite | the full-size boolean mask cost a pass and an allocation per tensor (1.8 s of 13 s) |
| `ingredients/writer.py` `_BackgroundWriter` | a writer thread writes each tensor while the next is mixed, a second thread hashes it meanwhile, and the file is synced every 64 MB so the final fsync is short | writing, hashing and syncing the output no longer add to the mixing time |
| `ingredients/digest.py`, `ingredient.compute_digests`, `prefetch_digests` | input digests hashed in parallel threads (reused buffer, GIL released) in the background while the soup is mixed and written (`Soup.save`), and from the moment `cook` has its ingredients (while a recipe evaluates); a per-file lock so a file is hashed once | the manifest's sha256 of 3.2 GB of inputs was a serial pass before any mixing |
| `soup.py`, `writer.write_soup` | the manifest and card may be functions, called once the weights are written | so the digests above can still be running while the weights are written |
"""


def learned(quick: bool, repeats: int) -> list[Table] | str:
    """bench_learned.py (another helper's) is its own script: include what it prints."""
    script = HERE / "bench_learned.py"
    if not script.is_file():
        return "benchmarks/bench_learned.py is not there yet."
    args = ["--hidden", "1024", "--ks", "2,4,8"] if quick else []
    done = subprocess.run(
        [PYTHON, str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        return f"bench_learned.py failed:\n\n```\n{done.stderr.strip()[-2000:]}\n```"
    return done.stdout.strip()


SECTIONS: dict[str, tuple[str, Callable[[bool, int], list[Table] | str], str]] = {
    "coldstart": ("Cold start", bench_coldstart.bench, bench_coldstart.PROSE),
    "uniform": ("Uniform soup (out of core)", bench_uniform.bench, bench_uniform.PROSE),
    "eval": ("Evaluation", bench_eval.bench, bench_eval.PROSE),
    "greedy": ("Greedy soup", bench_greedy.bench, bench_greedy.PROSE),
    "learned": (
        "Learned soup",
        learned,
        "From `benchmarks/bench_learned.py`: the learned soup's peak RSS in streaming mode "
        "against k, and its time per epoch against the in-memory mode, each configuration in "
        "its own process.",
    ),
    "sweep": ("Sweep training", bench_sweep.bench, bench_sweep.PROSE),
    "distributed": ("Distributed evaluation", bench_distributed.bench, bench_distributed.PROSE),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (minutes, not half an hour)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to rerun ({', '.join(SECTIONS)}); the others keep "
        "their last results",
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the markdown")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    saved = _load_sections() if args.only else {}
    for key in chosen:
        title, fn, _prose = SECTIONS[key]
        log(f"=== {title}")
        entry: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "quick": args.quick,
            "repeats": args.repeats,
            "load_before": loadavg(),
        }
        started = time.perf_counter()
        try:
            res = fn(args.quick, args.repeats)
        except Exception:
            res = f"failed:\n\n```\n{traceback.format_exc()[-3000:]}\n```"
            log(f"{title} failed:\n{traceback.format_exc()}")
        entry["minutes"] = (time.perf_counter() - started) / 60
        entry["load_after"] = loadavg()
        if isinstance(res, list):
            for table in res:
                table.write_csv()
            entry["tables"] = [dataclasses.asdict(t) for t in res]
        else:
            entry["text"] = res
        saved[key] = entry
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    SAVED.write_text(json.dumps(saved, indent=1) + "\n")
    doc = render(saved, machine())
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(doc)
    log(f"wrote {args.doc} and {RESULTS}/")
    return 0


def _load_sections() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(SAVED.read_text())
    except (OSError, ValueError):
        return {}


def _tables(entry: dict[str, Any]) -> list[Table] | str:
    if "tables" in entry:
        return [
            Table(**{**t, "targets": [tuple(x) for x in t["targets"]]}) for t in entry["tables"]
        ]
    return str(entry.get("text", ""))


def render(saved: dict[str, dict[str, Any]], info: dict[str, str]) -> str:
    entries = [(key, saved[key]) for key in SECTIONS if key in saved]
    runs = "; ".join(
        f"{SECTIONS[k][0].lower()}: {e['date']}, "
        f"{'--quick' if e['quick'] else 'full sizes'}, {e['repeats']} repeat(s), "
        f"{e['minutes']:.1f} min, load {e['load_before']} -> {e['load_after']}"
        for k, e in entries
    )
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run_all.py` (`make bench`); do not edit by hand. Every",
        "figure is a ratio against a baseline measured in the same run; the CSVs are in",
        "`benchmarks/results/`.",
        "",
        "## How these were measured",
        "",
        f"- Runs (date, sizes, repeats, duration, load average 1/5/15 min before -> after): {runs}.",
        f"- Machine: {info['cpu']}, {info['nproc']} cores, {info['ram']} RAM, {info['os']}.",
        f"- Versions: Python {info['python']}, modelsoup {info['modelsoup']} (git "
        f"{info.get('git', '?')} plus the working tree), torch {info['torch']}, safetensors "
        f"{info['safetensors']}, numpy {info['numpy']}, transformers {info['transformers']}.",
        "- The machine was shared with other jobs (see the load averages), so absolute timings",
        "  are noisy: configurations compared in a ratio run interleaved (A B C A B C ...),",
        "  each in a fresh process unless noted, and tables show the median.",
        f"- Throughput workers (evaluation, greedy, sweep) run torch on {THREADS} intra-op "
        f"thread{'s' if THREADS > 1 else ''} on both",
        "  sides of each ratio: on a busy machine a two-thread op waits for whichever of its",
        "  threads was preempted, and two-thread timings swung by 5x between runs.",
        "- Peak RSS is the child process's own `ru_maxrss` (`os.wait4`); the orchestrating",
        "  process never imports torch.",
        f"- Scratch data (generated checkpoints, mergekit's virtualenv): `{bench_dir()}`.",
        "",
    ]
    results = {key: _tables(entry) for key, entry in entries}
    summary = []
    for key, res in results.items():
        if isinstance(res, list):
            for table in res:
                summary += [(SECTIONS[key][0], *t) for t in table.targets]
    if summary:
        lines += [
            "## Targets",
            "",
            "| area | target | measured | met |",
            "| --- | --- | --- | --- |",
        ]
        for area, target, measured, met in summary:
            verdict = "n/a" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {area} | {target} | {measured} | {verdict} |")
        lines.append("")
    lines += ["## What was optimized", "", OPTIMIZATIONS.strip(), ""]
    for key, res in results.items():
        title, _, prose = SECTIONS[key]
        lines += [f"## {title}", "", prose.strip(), ""]
        if isinstance(res, str):
            lines += [res, ""]
        else:
            for table in res:
                lines += [table.markdown()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
