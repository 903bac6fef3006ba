"""Evaluation throughput: the Evaluator against a bare ``torch.inference_mode`` loop on the same
model, data and batch size (interleaved in one process), and forward passes for ensembles once
their members are cached (expected: zero).

Run alone: ``python benchmarks/bench_eval.py [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, THREADS, Table, cli, log, run  # noqa: E402

PROSE = """
The Evaluator (batched `torch.inference_mode`, per-example logits cached on disk by content
digest, task/split fingerprint and example index) against a bare loop over the same model,
data and batch size; then ensembles built from cached member logits, counted with
`Evaluator.stats`.
"""


def worker(size: str, repeats: int) -> dict:
    import torch
    from mlp_task import make_task, teacher, write_ingredients

    from modelsoup.evaluation.ensemble import ensemble_logits, greedy_ensemble
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import load_ingredients

    torch.set_num_threads(THREADS)

    task = make_task(size)
    split = task.split("heldout")
    x, n, bs = split.examples, len(split), task.batch_size
    sd = {k: v.clone() for k, v in teacher(size).state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    ev = Evaluator(task, cache_dir=tmp / "cache", progress=False)

    model = task.build_model().eval()

    def bare() -> float:
        start = time.perf_counter()
        model.load_state_dict(sd)  # as the Evaluator does for each new source
        outs = []
        with torch.inference_mode():
            for i in range(0, n, bs):
                outs.append(model(x[i : i + bs]).float())
        torch.cat(outs)
        return time.perf_counter() - start

    def evaluator(r: int) -> float:
        start = time.perf_counter()
        ev.logits((f"bench-eval-{r}-{time.time_ns()}", sd), "heldout")  # a fresh key: no hits
        return time.perf_counter() - start

    bare()  # warm-up (allocator, kernels)
    evaluator(-1)
    t_bare, t_ev = [], []
    for r in range(repeats):
        t_bare.append(bare())
        t_ev.append(evaluator(r))

    # ensembles from the cache: evaluate the members once, then count forward passes
    ings = load_ingredients(write_ingredients(size, 4, tmp / "ings"))
    first = Evaluator(task, cache_dir=tmp / "cache", progress=False)
    for ing in ings:
        first.logits(ing, "heldout")
        first.logits(ing, "test")
    members_forward = first.stats.forward_examples
    second = Evaluator(task, cache_dir=tmp / "cache", progress=False)  # a new command, say
    ens = {s: ensemble_logits(second.logits(i, s) for i in ings) for s in ("heldout", "test")}
    found = greedy_ensemble([second.logits(i, "heldout") for i in ings], split.labels)
    _ = second.metrics(ens["test"], "test")
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "n": n,
        "batch": bs,
        "bare_s": statistics.median(t_bare),
        "evaluator_s": statistics.median(t_ev),
        "bare_all": t_bare,
        "evaluator_all": t_ev,
        "members_forward": members_forward,
        "ensemble_forward": second.stats.forward_examples,
        "ensemble_cached": second.stats.cached_examples,
        "greedy_chosen": len(found.chosen),
        "threads": torch.get_num_threads(),
    }


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    size = "quick" if quick else "full"
    reps = max(3 * repeats, 9)
    log(f"evaluation throughput ({size} MLP), {reps} interleaved repeats")
    res = run([PYTHON, __file__, "worker", size, str(reps)]).json()
    ratio = res["bare_s"] / res["evaluator_s"]
    eps = res["n"] / res["evaluator_s"]
    table = Table(
        "eval_throughput",
        "Evaluation throughput: Evaluator vs a bare torch.inference_mode loop",
        ["configuration", "examples", "batch", "median s", "examples/s", "x bare loop"],
        [
            [
                "bare inference_mode loop",
                res["n"],
                res["batch"],
                res["bare_s"],
                res["n"] / res["bare_s"],
                1.0,
            ],
            [
                "Evaluator.logits (fresh key, cached to disk)",
                res["n"],
                res["batch"],
                res["evaluator_s"],
                eps,
                ratio,
            ],
        ],  # fmt: skip
        notes=(
            f"An MLP ({'128-512-512-10' if quick else '256-1024-1024-10'}) on generated data, "
            f"{res['threads']} torch threads, the same model, data and batch size; the two "
            f"alternate in one process, median of {len(res['bare_all'])}. The Evaluator's time "
            "includes collating by example index, moving outputs to float32 CPU, and writing "
            "the logits to its disk cache."
        ),
        targets=[("throughput >= 0.9x the bare loop", f"{ratio:.2f}x", ratio >= 0.9)],
    )
    ens = Table(
        "eval_ensemble_cache",
        "Ensembles from cached member logits: forward passes",
        ["step", "forward examples", "cached examples"],
        [
            ["4 members on held-out and test (first time)", res["members_forward"], 0],
            [
                "ensemble (held-out, test) + greedy ensemble, new Evaluator",
                res["ensemble_forward"],
                res["ensemble_cached"],
            ],
        ],  # fmt: skip
        notes="Counted by `Evaluator.stats`; the second evaluator shares only the disk cache.",
        targets=[
            (
                "no forward passes for cached ensembles",
                str(res["ensemble_forward"]),
                res["ensemble_forward"] == 0,
            ),
        ],  # fmt: skip
    )
    return [table, ens]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        print(json.dumps(worker(argv[1], int(argv[2]))))
        return
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
