"""What the torchrun tests run on every rank, and in-process for the single-process reference.

``python worker.py CKPTS OUT CACHE [--sweep-dir D] [--cli] [--device cpu|cuda]`` evaluates every ingredient, cooks
greedy soups (with and without early rejection) and learned soups, probes ``count_correct`` on a
partly cached candidate, optionally resumes a sweep in D and runs CLI commands through
``main(argv)``, then writes ``OUT/rank<r>.json`` with everything the test compares.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TASK_REF = f"{HERE / 'odd_task.py'}:make_task"
SWEEP = {
    "trials": 5,
    "batch_size": 32,
    "lr": (1e-3, 1e-1),
    "weight_decay": (1e-4, 1e-2),
    "epochs": (0.5, 1.0),
    "max_steps": 12,
    "probe_examples": 200,
}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _greedy(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "chosen": info["chosen"],
        "accepted": [s["accepted"] for s in info["trajectory"]],
        "scores": [s["heldout_score"] for s in info["trajectory"]],
        "evaluated": [s["evaluated_examples"] for s in info["trajectory"]],
        "heldout_score": info["heldout_score"],
    }


def run(
    ckpts: str,
    out: str,
    cache: str,
    sweep_dir: str | None = None,
    cli: bool = False,
    device: str = "cpu",
) -> dict:
    """Every check's result for this rank (the caller writes it)."""
    from modelsoup import distributed
    from modelsoup.evaluation import cache as cache_mod
    from modelsoup.evaluation.evaluator import Evaluator, evaluate_ingredients
    from modelsoup.evaluation.task import load_task
    from modelsoup.ingredients import load_ingredients
    from modelsoup.recipes import cook

    dev = distributed.init(device)
    saves = {"n": 0}
    original_save = cache_mod.PredictionCache.save

    def counting_save(self: Any, *args: Any, **kwargs: Any) -> None:
        saves["n"] += 1
        original_save(self, *args, **kwargs)

    cache_mod.PredictionCache.save = counting_save  # type: ignore[method-assign]
    record: dict[str, Any] = {"rank": distributed.rank(), "world": distributed.world_size()}
    try:
        task = load_task(TASK_REF)
        ings = load_ingredients([ckpts])
        ev = Evaluator(task, cache_dir=cache, progress=False, device=dev)

        table = evaluate_ingredients(ings, ev)
        record["evaluation"] = table.to_json()
        record["logits"] = {
            i.name: {s: _sha(ev.logits(i, s)) for s in ev.default_splits} for i in ings
        }
        record["predictions"] = {
            i.name: ev.logits(i, task.heldout).argmax(1).tolist() for i in ings
        }

        greedy = cook("greedy", ings, evaluator=ev)
        record["greedy"] = _greedy(greedy.info)
        record["greedy_soup_test"] = _sha(ev.logits(greedy, "test"))
        full = Evaluator(task, cache_dir=Path(cache) / "full", progress=False, device=dev)
        record["greedy_full"] = _greedy(
            cook("greedy", ings, evaluator=full, early_rejection=False).info
        )
        record["greedy_strict"] = _greedy(cook("greedy", ings, evaluator=ev, rule=">").info)

        # count_correct on a fresh candidate: stops early, caches part of the rows; logits()
        # then completes them from the partial entry.
        probe = Evaluator(task, cache_dir=Path(cache) / "probe", progress=False, device=dev)
        sd = greedy.state_dict()
        sd["head.weight"] = -sd["head.weight"]
        counts = [probe.count_correct(("probe", sd), "heldout", need=n) for n in (250, 30, 1)]
        record["count_correct"] = [[bool(a), int(b), int(c)] for a, b, c in counts]
        record["probe_logits"] = _sha(probe.logits(("probe", sd), "heldout"))

        for name, opts in {
            "learned": {"epochs": 2, "mode": "memory"},
            "learned_streaming_by_layer": {"epochs": 2, "mode": "streaming", "by_layer": True},
        }.items():
            info = cook("learned", ings, evaluator=ev, **opts).info
            record[name] = {
                "alpha": info["alpha"],
                "beta": info["beta"],
                "losses": info["loss_curve"],
                "heldout_loss": info["heldout_loss"],
                "alpha_by_group": info.get("alpha_by_group"),
            }

        if sweep_dir is not None:
            from modelsoup.demo import sweep as sweep_mod

            written: list[str] = []
            original_write = sweep_mod._save

            def recording_save(path: Path, *args: Any) -> None:
                written.append(path.name)
                original_write(path, *args)

            sweep_mod._save = recording_save
            try:
                record["sweep"] = {}
                for name, trials in (("resumed", SWEEP["trials"]), ("fresh", 3)):
                    written.clear()
                    options = sweep_mod.SweepOptions(**{**SWEEP, "trials": trials})
                    result = sweep_mod.run_sweep(
                        task, Path(sweep_dir) / name, options, progress=False, device=dev
                    )
                    record["sweep"][name] = {
                        "trained": result.trained,
                        "trials": [p.name for p in result.trials],
                        "written_here": sorted(written),
                    }
            finally:
                sweep_mod._save = original_write

        if cli:
            from modelsoup.cli.main import main

            runs = {
                "evaluate": ["evaluate", ckpts, "-o", f"{out}/cli-eval"],
                "greedy": ["cook", "greedy", ckpts, "-o", f"{out}/cli-greedy"],
            }
            record["cli"] = {}
            for name, argv in runs.items():
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    code = main(["-q", *argv, "--task", TASK_REF, "--device", device])
                record["cli"][name] = {"code": code, "stdout": buf.getvalue()}
    finally:
        cache_mod.PredictionCache.save = original_save  # type: ignore[method-assign]
    record["cache_saves"] = saves["n"]
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpts")
    parser.add_argument("out")
    parser.add_argument("cache")
    parser.add_argument("--sweep-dir")
    parser.add_argument("--cli", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    record = run(args.ckpts, args.out, args.cache, args.sweep_dir, args.cli, args.device)
    Path(args.out, f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1))
    from modelsoup import distributed

    distributed.shutdown()


if __name__ == "__main__":
    main()
