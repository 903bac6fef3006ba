"""``modelsoup evaluate PATH... --task TASK -o RUN_DIR``: every ingredient on every split.

Under ``torchrun`` the ranks share every split's examples; rank 0 prints and writes.
"""

from __future__ import annotations

import click

from modelsoup.cli.options import (
    device_option,
    join_ranks,
    paths_argument,
    precision_option,
    quiet,
    run_dir_option,
    task_option,
)
from modelsoup.cli.table import format_table


@click.command("evaluate")
@paths_argument
@task_option()
@run_dir_option("Run directory; evaluation.json and evaluation.csv are written there.")
@click.option(
    "--overwrite", is_flag=True, help="Replace evaluation.json/.csv if RUN_DIR already has them."
)
@device_option
@precision_option
@click.option("--batch-size", type=int, default=None, help="Batch size (default: the task's).")
@click.pass_context
def command(
    ctx: click.Context,
    paths: tuple[str, ...],
    task_ref: str,
    run_dir: str,
    overwrite: bool,
    device: str,
    precision: str,
    batch_size: int | None,
) -> None:
    """Evaluate every ingredient on every split of TASK; print a table of the headline metric (%).

    Logits are cached per example, so later commands (cook greedy, compare) reuse them.
    """
    from modelsoup import distributed
    from modelsoup.evaluation.evaluator import (
        Evaluator,
        check_evaluation_output,
        evaluate_ingredients,
    )
    from modelsoup.evaluation.task import load_task
    from modelsoup.ingredients import load_ingredients

    dev, main_rank = join_ranks(device)
    silent = quiet(ctx) or not main_rank
    check_evaluation_output(run_dir, overwrite=overwrite)
    ingredients = load_ingredients(paths)
    task = load_task(task_ref)
    evaluator = Evaluator(
        task, device=dev, batch_size=batch_size, progress=not silent, precision=precision
    )
    log = (lambda m: None) if silent else (lambda m: click.echo(m, err=True))
    table = evaluate_ingredients(ingredients, evaluator, log_fn=log)
    if main_rank:
        written = table.write(run_dir, overwrite=overwrite)
        click.echo(format_table(*table.display(), align="l" + "r" * len(table.splits) + "r"))
        click.echo(f"\nwritten: {', '.join(str(p) for p in written)}")
    distributed.barrier()
