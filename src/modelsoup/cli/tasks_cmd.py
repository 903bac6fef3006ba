"""``modelsoup tasks``: the registered built-in tasks, one line each."""

from __future__ import annotations

import click

from modelsoup.cli.table import format_table


@click.command("tasks")
def command() -> None:
    """List the built-in tasks (use them with --task NAME).

    Your own task: --task package.module:make_task or --task path/to/file.py:make_task
    (see docs/tasks.md and examples/).
    """
    from modelsoup.evaluation.task import builtin_tasks

    tasks = builtin_tasks()
    click.echo(
        format_table(
            ["task", "factory", "what it is"],
            [[name, target, summary] for name, (target, summary) in sorted(tasks.items())],
        )
    )
    click.echo("\nYour own: --task package.module:make_task or --task path/to/file.py:make_task")
