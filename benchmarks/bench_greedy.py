"""Greedy soup over >= 8 ingredients: example evaluations with exact early rejection against full
evaluation (identical selections required), and the soup-update overhead of one greedy step
against one held-out pass.

Run alone: ``python benchmarks/bench_greedy.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, THREADS, Table, log, run  # noqa: E402

K = 10

PROSE = """
`cook greedy` with exact early rejection (stop scoring a candidate once it cannot reach the
acceptance threshold even if every remaining example were right) against full evaluation of
every candidate: the selections must be identical. Savings depend on how many candidates are
rejected and by how much: an accepted candidate is always scored in full, and a rejected one
stops once its misses exceed the current soup's. Then the cost of one greedy step's soup update
(the candidate from the running sum, loaded into the model) against one held-out pass.
"""


def worker(size: str, repeats: int) -> dict:
    import torch
    from mlp_task import make_task, write_ingredients

    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import load_ingredients
    from modelsoup.recipes import cook
    from modelsoup.recipes.greedy import RunningSum

    torch.set_num_threads(THREADS)

    task = make_task(size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-greedy-"))
    ings = load_ingredients(write_ingredients(size, K, tmp / "ings"))
    out: dict = {"k": K, "n": len(task.split("heldout"))}

    # individual held-out logits are shared (cached once); candidates are never cached across
    # runs because each run gets its own prediction cache copy of the individual results.
    warm = Evaluator(task, cache_dir=tmp / "base", progress=False)
    for ing in ings:
        warm.logits(ing, "heldout")
    for label, early in (("early", True), ("full", False)):
        cache = tmp / f"cache-{label}"
        shutil.copytree(tmp / "base", cache)
        ev = Evaluator(task, cache_dir=cache, progress=False)
        start = time.perf_counter()
        soup = cook("greedy", ings, evaluator=ev, early_rejection=early)
        out[label] = {
            "wall_s": time.perf_counter() - start,
            "chosen": soup.info["chosen"],
            "examples_evaluated": soup.info["examples_evaluated"],
            "examples_full": soup.info["examples_full"],
            "forward_examples": ev.stats.forward_examples,
            "accepted": sum(s["accepted"] for s in soup.info["trajectory"]),
            "heldout_score": soup.info["heldout_score"],
        }

    # one greedy step's soup update (candidate state dict + loading it) vs one held-out pass
    ev = Evaluator(task, cache_dir=tmp / "overhead", progress=False)
    model = ev.load_model(ings[0].state_dict())
    split = task.split("heldout")
    x, n, bs = split.examples, len(split), task.batch_size
    running = RunningSum(ings)
    running.add(0)
    t_candidate, t_add, t_pass = [], [], []
    for r in range(repeats):
        s = time.perf_counter()
        sd = running.candidate(1 + r % (K - 1))
        ev.load_model(sd)
        t_candidate.append(time.perf_counter() - s)
        s = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, bs):
                model(x[i : i + bs])
        t_pass.append(time.perf_counter() - s)
        fresh = RunningSum(ings)
        fresh.add(0)
        s = time.perf_counter()
        fresh.add(1)
        t_add.append(time.perf_counter() - s)
    out["candidate_s"] = statistics.median(t_candidate)
    out["add_s"] = statistics.median(t_add)
    out["pass_s"] = statistics.median(t_pass)
    out["params"] = sum(t.numel() for t in ings[0].state_dict().values())
    return out


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    size = "quick" if quick else "full"
    log(f"greedy soup over {K} ingredients ({size} MLP)")
    res = run([PYTHON, __file__, "worker", size, str(max(3 * repeats, 9))]).json()
    early, full = res["early"], res["full"]
    same = early["chosen"] == full["chosen"]
    saved = 1 - early["examples_evaluated"] / full["examples_evaluated"]
    evals = Table(
        "greedy_early_rejection",
        f"Greedy soup over {K} ingredients: exact early rejection vs full evaluation",
        [
            "mode",
            "candidate example evaluations",
            "forward examples",
            "wall s",
            "accepted",
            "chosen",
            "held-out acc",
        ],
        [
            [
                "full evaluation",
                full["examples_evaluated"],
                full["forward_examples"],
                full["wall_s"],
                full["accepted"],
                len(full["chosen"]),
                full["heldout_score"],
            ],
            [
                "early rejection",
                early["examples_evaluated"],
                early["forward_examples"],
                early["wall_s"],
                early["accepted"],
                len(early["chosen"]),
                early["heldout_score"],
            ],
        ],  # fmt: skip
        notes=(
            f"An MLP task with {res['n']} held-out examples; the ingredients are a teacher's "
            "weights plus noise of growing scale (so the loud ones are rejected). Individual "
            "held-out logits come from a shared cache in both modes; 'forward examples' counts "
            "every example run through a model (Evaluator.stats). Chosen: "
            f"{', '.join(early['chosen'])}."
        ),
        targets=[
            ("identical selections", "identical" if same else "DIFFERENT", same),
            ("early rejection saves example evaluations", f"{100 * saved:.0f}% saved", saved > 0),
        ],  # fmt: skip
    )
    over = res["candidate_s"] / res["pass_s"]
    add = res["add_s"] / res["pass_s"]
    overhead = Table(
        "greedy_step_overhead",
        "Greedy step: soup update against one held-out pass",
        ["work", "median s", "% of one held-out pass"],
        [
            ["one held-out pass (bare inference_mode loop)", res["pass_s"], 100.0],
            [
                "candidate = (running sum + theta_i) / n, loaded into the model",
                res["candidate_s"],
                100 * over,
            ],
            ["accept: add theta_i to the running sum", res["add_s"], 100 * add],
        ],  # fmt: skip
        notes=(
            f"{res['params'] / 1e6:.1f}M parameters, {res['n']} held-out examples; the update "
            "reads one ingredient (memory-mapped) and touches one model's worth of tensors."
        ),
        targets=[
            (
                "soup update < 5% of one held-out pass",
                f"{100 * (over + add):.1f}%",
                over + add < 0.05,
            ),
        ],  # fmt: skip
    )
    return [evals, overhead]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        print(json.dumps(worker(argv[1], int(argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for table in bench(args.quick, args.repeats):
        table.write_csv()
        print(table.markdown())


if __name__ == "__main__":
    main()
