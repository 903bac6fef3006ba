"""``modelsoup`` entry point: a click group whose commands are imported only when used.

``main(argv)`` runs the CLI and returns the exit code, so tests can call it directly. Any
:class:`~modelsoup.errors.ModelSoupError` becomes a one-line message and exit code 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

import click

from modelsoup import __version__

#: command name -> (module under modelsoup.cli, one-line help). Each module defines ``command``.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": (
        "inspect_cmd",
        "Show ingredients (format, tensors, size, digest) and check compatibility.",
    ),
    "recipes": ("recipes_cmd", "List the soup recipes."),
    "cook": ("cook", "Make a soup from ingredients with a recipe and save it."),
    "tasks": ("tasks_cmd", "List the built-in tasks."),
    "evaluate": ("evaluate", "Evaluate every ingredient on every split of a task."),
    "compare": ("compare", "The paper's table: soups, ensembles and baselines, with significance."),
    "sweep": ("sweep", "Fine-tune many models from one shared init with random hyperparameters."),
    "demo": ("demo", "Run the built-in offline demo: sweep, soups, baselines, report."),
    "analyze": ("analyze", "The paper's analyses and figures for a run directory."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs (fast ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module = importlib.import_module(f"modelsoup.cli.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"modelsoup.cli.{COMMANDS[name][0]}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelsoup")
@click.option("-v", "--verbose", count=True, help="More output (-vv for debug logs).")
@click.option(
    "-q", "--quiet", is_flag=True, help="Only errors and final results; no progress bars."
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """modelsoup: average fine-tuned models into one better model (Wortsman et al., ICML 2022).

    \b
    Quick start:
      modelsoup demo                       # the offline demo: sweep, soups, report
      modelsoup inspect trials/            # what is in a folder of checkpoints
      modelsoup cook uniform trials/ -o soup
      modelsoup cook greedy trials/ --task toy -o soup
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = verbose
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example:
        >>> main(["recipes"])  # doctest: +SKIP
        0
    """
    from modelsoup.errors import ModelSoupError

    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="modelsoup",
            standalone_mode=False,
        )
    except ModelSoupError as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


def entrypoint() -> None:
    """Console-script entry point (also ``python -m modelsoup`` and ``python -m modelsoup.cli.main``,
    e.g. under ``torchrun --nproc_per_node 2 -m modelsoup.cli.main ...``)."""
    code = main()
    if code == 0 and "modelsoup.distributed" in sys.modules:  # never import torch for --help
        from modelsoup import distributed

        distributed.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
