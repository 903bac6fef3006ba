"""Evaluation under torchrun: two processes (gloo, one thread each) against one, in one run.

Each configuration is a fresh child process (or a ``torchrun --standalone`` group) that
evaluates k ingredients of the MLP benchmark task on its held-out and test splits with an empty
cache, then cooks a greedy soup (candidates scored with exact early rejection). The worker times
these phases itself (between barriers, so process start-up and the rendezvous are reported
apart); the configurations alternate, and the medians give the ratios.

Run alone: ``python benchmarks/bench_distributed.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Table, bench_dir, cli, interleaved, loadavg, log, run  # noqa: E402

PROSE = """
Sharded evaluation under `torchrun` (gloo on the CPU): every rank evaluates whole batches of
its block of each split, the logits are gathered, rank 0 writes the cache. Two processes with
one thread each against one process with one thread (the same two cores as the 2-process run
are then half idle) and one process with two threads (intra-op parallelism on the same two
cores), in one run.
"""


def worker(size: str, k: int, threads: int) -> dict:
    import torch
    from mlp_task import make_task, write_ingredients

    from modelsoup import distributed
    from modelsoup.evaluation.evaluator import Evaluator, evaluate_ingredients
    from modelsoup.ingredients import load_ingredients
    from modelsoup.recipes import cook

    started = time.perf_counter()
    torch.set_num_threads(threads)
    distributed.init("cpu")
    joined = time.perf_counter()
    task = make_task(size)
    folder = bench_dir() / f"distributed-{size}-k{k}"
    if distributed.is_main() and not (folder / f"ing_{k - 1:02d}.safetensors").is_file():
        write_ingredients(size, k, folder)
    distributed.barrier()
    ings = load_ingredients(sorted(folder.glob("ing_*.safetensors"))[:k])
    for ing in ings:
        _ = ing.digest  # hashing is not what is measured
    cache = Path(distributed.broadcast_object(tempfile.mkdtemp(prefix="bench-dist-")))
    ev = Evaluator(task, cache_dir=cache, progress=False)

    distributed.barrier()
    t0 = time.perf_counter()
    table = evaluate_ingredients(ings, ev)
    distributed.barrier()
    t1 = time.perf_counter()
    soup = cook("greedy", ings, evaluator=ev)
    distributed.barrier()
    t2 = time.perf_counter()
    if distributed.is_main():
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "world": distributed.world_size(),
        "threads": torch.get_num_threads(),
        "examples": sum(len(task.split(s)) for s in table.splits) * k,
        "evaluate_s": t1 - t0,
        "greedy_s": t2 - t1,
        "startup_s": joined - started,
        "chosen": soup.info["chosen"],
        "accuracy": [row["metrics"]["test"]["accuracy"] for row in table.rows],
        "rank0_forward_examples": ev.stats.forward_examples,
    }


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    size, k = ("quick", 4) if quick else ("full", 8)
    script = str(Path(__file__).resolve())
    args = ["worker", size, str(k)]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    configs = {
        "1 process, 1 thread": lambda: run([PYTHON, script, *args, "1"], env=env),
        "1 process, 2 threads": lambda: run([PYTHON, script, *args, "2"], env=env),
        "torchrun, 2 processes x 1 thread": lambda: run([*torchrun, script, *args, "1"], env=env),
    }
    log(f"distributed evaluation ({size} MLP, k={k}), {repeats} interleaved repeats")
    load_before = loadavg()
    stats = interleaved(configs, repeats)
    load_after = loadavg()
    base = stats["1 process, 1 thread"]
    reference = base.extra[0]
    rows = []
    for name, st in stats.items():
        ev_s, greedy_s = st.median_of("evaluate_s"), st.median_of("greedy_s")
        same = all(
            e["chosen"] == reference["chosen"] and e["accuracy"] == reference["accuracy"]
            for e in st.extra
        )
        rows.append(
            [
                name,
                ev_s,
                reference["examples"] / ev_s,
                base.median_of("evaluate_s") / ev_s,
                greedy_s,
                base.median_of("greedy_s") / greedy_s,
                st.wall,
                "yes" if same else "**no**",
            ]
        )
    speedup = rows[2][3]
    table = Table(
        "distributed_eval",
        "Evaluation and greedy soup: torchrun with 2 processes vs 1 process",
        [
            "configuration",
            "evaluate s",
            "examples/s",
            "evaluate x 1 process",
            "greedy s",
            "greedy x 1 process",
            "whole run s (start-up included)",
            "same results",
        ],
        rows,
        notes=(
            f"An MLP ({'128-512-512-10' if quick else '256-1024-1024-10'}), k = {k} "
            f"ingredients, held-out and test splits of 8,192 examples each, batch 256, an empty "
            f"cache; medians of {repeats} interleaved runs on this {os.cpu_count()}-core "
            f"machine, shared with other work (load average {load_before} before, "
            f"{load_after} after), so expect noise. 'evaluate' and 'greedy' are "
            "timed inside the workers between barriers; the last time column is the whole "
            "child process (Python and torch import, rendezvous). 'same results': every run "
            "chose the same greedy soup and gave the same per-ingredient accuracies as the "
            "single process."
        ),
        targets=[
            (
                "2 processes evaluate faster than 1 (ratio > 1.3x on 2 cores)",
                f"{speedup:.2f}x",
                speedup > 1.3,
            ),
            ("identical selections and accuracies", rows[2][7], rows[2][7] == "yes"),
        ],
    )
    return [table]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        res = worker(argv[1], int(argv[2]), int(argv[3]))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(res))
        return
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
