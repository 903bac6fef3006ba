"""``modelsoup sweep --task TASK --trials N -o RUN_DIR``: fine-tune from one shared init.

Writes ``RUN_DIR/init.safetensors`` (the linear-probe init) and ``RUN_DIR/trials/trial_XXX``
(weights + sidecar JSON); a rerun skips finished trials. Every field of
:class:`~modelsoup.demo.sweep.SweepOptions` is a flag (ranges as ``LOW,HIGH``). Under
``torchrun`` the trials are dealt round-robin to the ranks (one GPU each with ``--device cuda``).
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from modelsoup.cli.options import (
    device_option,
    join_ranks,
    model_option_flags,
    quiet,
    run_dir_option,
    task_option,
)
from modelsoup.demo.sweep import QUICK, SweepOptions


def run(task_ref: str, run_dir: str, quick: bool, device: str, **flags: Any) -> None:
    """Fine-tune one model many times with random hyperparameters (the paper's sweep).

    \b
    Example:
      modelsoup sweep --task toy --trials 8 -o runs/toy
      modelsoup sweep --task demo --trials 4 --quick -o runs/demo-sweep
      torchrun --nproc_per_node 2 -m modelsoup sweep --task toy --trials 8 -o runs/toy
    """
    from modelsoup.demo.sweep import run_sweep
    from modelsoup.evaluation.task import load_task

    ctx = click.get_current_context()
    given = {
        k: v
        for k, v in flags.items()
        if v is not None and ctx.get_parameter_source(k) != ParameterSource.DEFAULT
    }
    values = {**(QUICK if quick else {}), **given}
    options = SweepOptions.parse(**values)
    dev, main_rank = join_ranks(device)
    silent = quiet(ctx) or not main_rank
    say = (lambda m: None) if silent else (lambda m: click.echo(m, err=True))
    result = run_sweep(
        load_task(task_ref), run_dir, options, progress=not silent, log=say, device=dev
    )
    if not main_rank:
        return
    click.echo(
        f"{run_dir}: init + {len(result.trials)} trial(s) ({len(result.trained)} trained now, "
        f"{len(result.trials) - len(result.trained)} reused) in {result.wall_time:.0f}s"
    )


run = model_option_flags(SweepOptions, run)
run = device_option(run)
run = click.option("--quick", is_flag=True, help="Half-length runs and a smaller linear probe.")(
    run
)
run = run_dir_option("Run directory (created; reused to resume).")(run)
run = task_option()(run)
command = click.command("sweep")(run)
