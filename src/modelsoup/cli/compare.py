"""``modelsoup compare PATH... --task TASK -o RUN_DIR``: the paper's table, with significance.

Prints the table and writes ``RUN_DIR/results.json``, ``results.csv``, ``report.md``,
``fig1.png`` (see docs/results.md) and the greedy soup in ``RUN_DIR/soups/greedy_soup/``.
Under ``torchrun`` the ranks share the evaluation and the learned soups' fitting; rank 0
prints and writes.
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


@click.command("compare")
@paths_argument
@task_option()
@run_dir_option("Run directory for results.json, results.csv, report.md, fig1.png and soups/.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seeds the random greedy order, learned soups, permutations and bootstrap.",
)
@click.option(
    "--rule",
    type=click.Choice([">=", ">"]),
    default=">=",
    show_default=True,
    help="Greedy acceptance rule: >= (the paper) or > (the official code).",
)
@device_option
@precision_option
@click.option(
    "--batch-size", type=int, default=None, help="Evaluation batch size (default: the task's)."
)
@click.option(
    "--methods",
    default=None,
    metavar="A,B,...",
    help="Only these rows (best_individual is always included). Default: all available.",
)
@click.option(
    "--save-soups",
    "save_soups",
    default=None,
    metavar="A,B,...|all|none",
    help="Soups to save as RUN_DIR/soups/<name>/ (weights, soup.json, soup card) "
    "[default: greedy_soup, when computed].",
)
@click.option("--ci", is_flag=True, help="Show 95% confidence intervals in the terminal table.")
@click.option("--overwrite", is_flag=True, help="Replace results already in RUN_DIR.")
def command(
    paths: tuple[str, ...],
    task_ref: str,
    run_dir: str,
    seed: int,
    rule: str,
    device: str,
    precision: str,
    batch_size: int | None,
    methods: str | None,
    save_soups: str | None,
    ci: bool,
    overwrite: bool,
) -> None:
    """Compare soups, ensembles and baselines on held-out, ID and shift splits (the paper's table)."""
    from modelsoup import distributed
    from modelsoup.evaluation.compare import compare
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.evaluation.report import (
        check_run_dir,
        format_table,
        write_results,
        write_soups,
    )
    from modelsoup.evaluation.task import load_task
    from modelsoup.ingredients import load_ingredients

    dev, main_rank = join_ranks(device)
    silent = quiet(click.get_current_context()) or not main_rank
    check_run_dir(run_dir, overwrite=overwrite, soups=save_soups != "none")
    distributed.barrier()  # every rank has checked RUN_DIR before rank 0 may write it
    ingredients = load_ingredients(paths)
    evaluator = Evaluator(
        load_task(task_ref),
        device=dev,
        batch_size=batch_size,
        progress=not silent,
        precision=precision,
    )
    wanted = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    say = (lambda m: None) if silent else (lambda m: click.echo(m, err=True))
    result = compare(ingredients, evaluator, methods=wanted, seed=seed, rule=rule, log=say)
    meta = {
        "command": "modelsoup compare",
        "paths": list(paths),
        "task_ref": task_ref,
        "device": str(evaluator.device),
        "precision": precision,
        "batch_size": evaluator.batch_size,
        "world_size": distributed.world_size(),
    }
    if main_rank:
        written = write_results(result, run_dir, overwrite=overwrite, metadata=meta)
        soups = write_soups(
            result, run_dir, _soup_names(save_soups, list(result.soups)), overwrite=overwrite
        )
        written.update({f"soups/{name}": path for name, path in soups.items()})
        click.echo(format_table(result, ci=ci))
        click.echo(f"\nwrote {', '.join(str(p) for p in written.values())}")
    distributed.barrier()


def _soup_names(spec: str | None, cooked: list[str]) -> list[str]:
    """``all``, ``none`` or a comma-separated list; by default the greedy soup, if cooked."""
    if spec is None:
        return [n for n in ("greedy_soup",) if n in cooked]
    if spec == "all":
        return cooked
    if spec == "none":
        return []
    return [n.strip() for n in spec.split(",") if n.strip()]
