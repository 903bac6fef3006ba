"""``modelsoup analyze RUN_DIR [--task TASK] [--pairs N] [--light]``: the paper's analyses.

Writes ``RUN_DIR/analysis/``: analysis.json, the figures (PNG) and analysis.md (see
docs/analysis.md).
"""

from __future__ import annotations

import click

from modelsoup.cli.options import device_option, quiet, rank_zero_only, task_option


@click.command("analyze")
@click.argument("run_dir", type=click.Path(), metavar="RUN_DIR")
@task_option(required=False)
@click.option("--pairs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Pairs of fine-tuned models for Figures 3, 4 and Eq. 1 "
                   "(default: all, at most 15; with --light: 3).")  # fmt: skip
@click.option("--light", is_flag=True,
              help="The cheap subset modelsoup demo runs: 3 pairs, one 3-point interpolation curve, "
                   "Eq. 1 at the midpoint, a coarse plane on 128 examples per split.")  # fmt: skip
@click.option("--resolution", type=click.IntRange(min=2), default=None, metavar="R",
              help="Grid points per axis of the plane, R x R soups (default 11; --light: 4).")  # fmt: skip
@device_option
@click.option("--batch-size", type=int, default=None, help="Evaluation batch size (default: the task's).")  # fmt: skip
def command(run_dir: str, task_ref: str | None, pairs: int | None, light: bool,
            resolution: int | None, device: str, batch_size: int | None) -> None:  # fmt: skip
    """Interpolation curves, the loss/error plane (Fig. 2), angle vs interpolation advantage
    (Fig. 3), two-model soups vs ensembles (Fig. 4), Eq. 1 and calibration, for RUN_DIR
    (made by `modelsoup sweep` or `modelsoup demo`). TASK defaults to the one the run recorded."""
    from modelsoup.analysis import analyze

    if not rank_zero_only("analyze"):
        return
    silent = quiet(click.get_current_context())
    say = (lambda m: None) if silent else (lambda m: click.echo(m, err=True))
    doc = analyze(run_dir, task_ref, pairs, light, resolution=resolution, device=device,
                  batch_size=batch_size, progress=not silent, log=say)  # fmt: skip
    for name, reason in doc["skipped"].items():
        click.echo(f"skipped {name}: {reason}", err=True)
    out = f"{doc['run_dir']}/analysis"
    click.echo(f"wrote {out}/analysis.md, {out}/analysis.json and {len(doc['figures'])} figures")
