"""``modelsoup recipes``: the registered recipes, one line each."""

from __future__ import annotations

import click

from modelsoup.cli.table import format_table


@click.command("recipes")
def command() -> None:
    """List the soup recipes with one line each and the paper link."""
    from modelsoup.recipes import list_recipes

    recipes = list_recipes()
    click.echo(
        format_table(
            ["recipe", "name", "needs task", "what it does"],
            [[r.name, r.title, "yes" if r.needs_task else "no", r.summary] for r in recipes],
        )
    )
    click.echo(f"\nPaper: Wortsman et al., Model soups (ICML 2022), {recipes[0].paper_url}")
