"""``modelsoup demo [-o RUN_DIR] [--trials N] [--quick]``: the offline demo, end to end.

Sweeps MiniLM on Rotten Tomatoes snippets, compares soups, ensembles and the best individual
model on the ID test and four shifts, and writes report.md (table, intervals, p-values,
Figure 1). Reruns reuse finished trials and cached predictions.
"""

from __future__ import annotations

import click

from modelsoup.cli.options import device_option, quiet, rank_zero_only, run_dir_option


@click.command("demo")
@run_dir_option(
    "Run directory [default: runs/demo, or runs/demo-quick with --quick].", required=False
)
@click.option(
    "--trials",
    type=click.IntRange(min=2),
    default=None,
    help="Fine-tuning runs [default: 8, or 4 with --quick; 24: a larger sweep, about 29 more "
    "minutes].",
)
@click.option(
    "--quick",
    is_flag=True,
    help="4 short runs, smaller evaluation sets, no learned soups or analyses (under 5 minutes).",
)
@click.option(
    "--analysis/--no-analysis",
    default=None,
    help="Run the light analyses into RUN_DIR/analysis [default: yes, no with --quick].",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seeds the sweep, the data samples and the statistics.",
)
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    hidden=True,
    help="Another encoder directory (tests use a tiny BERT).",
)
@click.option(
    "--preset", type=click.Choice(["default", "quick", "smoke"]), default=None, hidden=True
)
@device_option
def command(
    run_dir: str | None,
    trials: int | None,
    quick: bool,
    analysis: bool | None,
    seed: int,
    model_dir: str | None,
    preset: str | None,
    device: str,
) -> None:
    """Run the built-in offline demo: sweep, soups, baselines, report."""
    from modelsoup.demo.run import run_demo, summary_lines
    from modelsoup.evaluation.report import format_table

    if not rank_zero_only("demo"):
        return
    silent = quiet(click.get_current_context())
    say = (lambda m: None) if silent else (lambda m: click.echo(m, err=True))
    result = run_demo(
        run_dir,
        preset=preset or ("quick" if quick else "default"),
        trials=trials,
        seed=seed,
        model_dir=model_dir,
        device=device,
        analysis=analysis,
        progress=not silent,
        log=say,
    )
    click.echo(format_table(result.comparison, ci=True))
    click.echo("")
    for line in summary_lines(result.comparison, result.timings):
        click.echo(line)
    click.echo(f"report: {result.files['report.md']}")
    if "soups/greedy_soup" in result.files:
        click.echo(f"greedy soup: {result.files['soups/greedy_soup']}")
