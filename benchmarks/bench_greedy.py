"""Greedy soup over >= 8 ingredients: example evaluations with exact early rejection against full
evaluation (identical selections required), and the soup-update overhead of one greedy step
against one held-out pass.

With a finished demo sweep (``runs/demo`` or ``$MODELSOUP_BENCH_DEMO_RUN``), also on its trials.
Run alone: ``python benchmarks/bench_greedy.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, REPO, THREADS, Table, cli, log, run  # noqa: E402

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
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def demo_worker(run_dir: str) -> dict:
    """Greedy, early rejection vs full, on a finished demo sweep (``modelsoup sweep``'s run dir)."""
    import torch

    torch.set_num_threads(THREADS)

    from modelsoup.demo.demo_task import make_task
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import load_ingredients
    from modelsoup.recipes import cook

    sweep = json.loads((Path(run_dir) / "sweep.json").read_text())
    size, seed = sweep["task_version"].split("|")[1:3]
    task = make_task(size, seed=int(seed))
    ings = load_ingredients([Path(run_dir) / "trials"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-greedy-demo-"))
    warm = Evaluator(task, cache_dir=tmp / "base", progress=False)
    start = time.perf_counter()
    for ing in ings:
        warm.logits(ing, task.heldout)
    one_pass = (time.perf_counter() - start) / len(ings)
    out: dict = {"k": len(ings), "n": len(task.split(task.heldout)), "pass_s": one_pass}
    out["options"] = sweep["options"]
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
            "forward_examples": ev.stats.forward_examples,
            "heldout_score": soup.info["heldout_score"],
            "margins": _margins(soup.info["trajectory"], out["n"]),
        }
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _margins(trajectory: list[dict], n: int) -> list[int]:
    """For each rejected candidate (fully scored), how many examples it fell short by."""
    current, short = None, []
    for step in trajectory:
        score = step["heldout_score"]
        if step["accepted"]:
            current = score
        elif score is not None and current is not None:
            short.append(round((current - score) * n))
    return short


def demo_table(run_dir: str) -> Table:
    log(f"greedy soup on the demo sweep in {run_dir} (slow: real MiniLM evaluations)")
    res = run([PYTHON, __file__, "demo", run_dir]).json()
    return demo_result_table(res)


def demo_result_table(res: dict) -> Table:
    early, full = res["early"], res["full"]
    same = early["chosen"] == full["chosen"]
    saved = 1 - early["examples_evaluated"] / full["examples_evaluated"]
    opts = res["options"]
    margins = full["margins"]
    return Table(
        "greedy_demo_sweep",
        f"Greedy soup on a demo sweep ({res['k']} MiniLM fine-tunes): early rejection vs full",
        ["mode", "candidate example evaluations", "wall s", "chosen", "held-out score"],
        [
            [
                "full evaluation",
                full["examples_evaluated"],
                full["wall_s"],
                len(full["chosen"]),
                full["heldout_score"],
            ],
            [
                "early rejection",
                early["examples_evaluated"],
                early["wall_s"],
                len(early["chosen"]),
                early["heldout_score"],
            ],
        ],  # fmt: skip
        notes=(
            f"The demo task's held-out split ({res['n']} reviews), the sweep's trials as "
            f"ingredients (sweep options: lr {opts['lr']}, epochs {opts['epochs']}, freeze "
            f"{opts['freeze']}); individual logits shared from one cache; one held-out pass "
            f"took {res['pass_s']:.1f} s. Chosen: {', '.join(early['chosen'])}. The "
            f"{len(margins)} rejected candidates fell short of the current soup by "
            f"{', '.join(map(str, margins)) or '-'} examples: a candidate can only be stopped "
            "once its misses exceed the current soup's, so near misses are scored almost in "
            "full, and the savings come from clearly worse candidates (see the MLP table)."
        ),
        targets=[
            ("identical selections (demo sweep)", "identical" if same else "DIFFERENT", same),
            ("example evaluations saved (demo sweep; reported)", f"{100 * saved:.0f}% saved", None),
        ],  # fmt: skip
    )


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
            ("example evaluations saved (reported)", f"{100 * saved:.0f}% saved", None),
        ],  # fmt: skip
    )
    over = res["candidate_s"] / res["pass_s"]
    add = res["add_s"] / res["pass_s"]
    overhead = Table(
        "greedy_step_overhead",
        "Greedy step: soup update against one held-out pass",
        ["work", "median ms", "% of one held-out pass"],
        [
            ["one held-out pass (bare inference_mode loop)", 1000 * res["pass_s"], 100.0],
            [
                "candidate = (running sum + theta_i) / n, loaded into the model",
                1000 * res["candidate_s"],
                100 * over,
            ],
            ["accept: add theta_i to the running sum", 1000 * res["add_s"], 100 * add],
        ],
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
    tables = [evals, overhead]
    demo = os.environ.get("MODELSOUP_BENCH_DEMO_RUN") or str(REPO / "runs" / "demo")
    if not quick and (Path(demo) / "sweep.json").is_file():
        tables.append(demo_table(demo))
    return tables


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        print(json.dumps(worker(argv[1], int(argv[2]))))
        return
    if argv and argv[0] == "demo":
        print(json.dumps(demo_worker(argv[1])))
        return
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
