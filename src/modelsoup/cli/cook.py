"""``modelsoup cook RECIPE PATH... -o OUT``: one subcommand per registered recipe.

Each recipe's typed options become its flags, so a new recipe needs no CLI code. Under
``torchrun`` every rank takes part in the recipe (sharded evaluation, data-parallel fitting) and
rank 0 writes the soup.
"""

from __future__ import annotations

from typing import Any

import click

from modelsoup.cli.options import (
    device_option,
    join_ranks,
    model_option_flags,
    output_options,
    paths_argument,
    precision_option,
    quiet,
    task_option,
)


class RecipeGroup(click.Group):
    """Builds ``cook <recipe>`` from the recipe registry on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from modelsoup.recipes import list_recipes

        return [r.name for r in list_recipes()]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from modelsoup.errors import RecipeError
        from modelsoup.recipes import get_recipe

        try:
            return _recipe_command(get_recipe(name))
        except RecipeError:
            return None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:
        from modelsoup.recipes import get_recipe

        if args and not args[0].startswith("-"):
            get_recipe(args[0])  # an unknown name raises with the list of valid recipes
        return super().resolve_command(ctx, args)


@click.group("cook", cls=RecipeGroup)
def command() -> None:
    """Make a soup from ingredients with a recipe and save it to OUT (a directory)."""


def _recipe_command(recipe: type) -> click.Command:
    def run(
        paths: tuple[str, ...],
        out: str,
        overwrite: bool,
        task_ref: str | None,
        device: str,
        precision: str,
        batch_size: int | None,
        max_shard_size: str,
        accumulate: str,
        allow_nonfinite: bool,
        **options: Any,
    ) -> None:
        cook_to_disk(
            recipe.name,
            paths,
            out,
            overwrite=overwrite,
            task_ref=task_ref,
            device=device,
            precision=precision,
            batch_size=batch_size,
            max_shard_size=max_shard_size,
            accumulate=accumulate,
            allow_nonfinite=allow_nonfinite,
            quiet=quiet(click.get_current_context()),
            options={k: v for k, v in options.items() if v is not None},
        )

    f = model_option_flags(recipe.Options, run)
    f = click.option(
        "--allow-nonfinite", is_flag=True, help="Mix tensors holding NaN/Inf instead of refusing."
    )(f)
    f = click.option(
        "--accumulate",
        type=click.Choice(["fp32", "fp64"]),
        default="fp32",
        show_default=True,
        help="Accumulator precision.",
    )(f)
    f = click.option(
        "--max-shard-size",
        default="5GB",
        show_default=True,
        help="Split the output into shards above this size (e.g. 500MB, 2GiB).",
    )(f)
    f = click.option(
        "--batch-size", type=int, default=None, help="Evaluation batch size (default: the task's)."
    )(f)
    f = precision_option(f)
    f = device_option(f)
    f = task_option(required=recipe.needs_task)(f)
    f = output_options(f)
    f = paths_argument(f)
    return click.command(recipe.name, help=f"{recipe.title}: {recipe.summary}.")(f)


def cook_to_disk(
    recipe: str,
    paths: tuple[str, ...],
    out: str,
    *,
    overwrite: bool,
    task_ref: str | None,
    device: str,
    batch_size: int | None,
    max_shard_size: str,
    accumulate: str,
    allow_nonfinite: bool,
    quiet: bool,
    options: dict[str, Any],
    precision: str = "fp32",
) -> str:
    """Load ingredients, check the output, cook, save with a progress bar; return the digest.

    Under torchrun every rank cooks (the recipe splits its evaluation between them), rank 0
    saves, and every rank returns the soup's digest.
    """
    import torch
    from tqdm import tqdm

    from modelsoup import distributed
    from modelsoup.ingredients import load_ingredients
    from modelsoup.ingredients.ingredient import prefetch_digests
    from modelsoup.ingredients.writer import check_output, parse_size
    from modelsoup.recipes import cook

    dev, main_rank = join_ranks(device)
    quiet = quiet or not main_rank
    ingredients = load_ingredients(paths)
    check_output(
        click.format_filename(out) and __import__("pathlib").Path(out),
        ingredients,
        overwrite=overwrite,
    )
    distributed.barrier()  # every rank has checked OUT before rank 0 may write it
    shard = parse_size(max_shard_size)
    prefetch_digests(ingredients)  # the manifest needs them: hash while the recipe works
    evaluator = None
    if task_ref:
        from modelsoup.evaluation.evaluator import Evaluator
        from modelsoup.evaluation.task import load_task

        evaluator = Evaluator(
            load_task(task_ref),
            device=dev,
            batch_size=batch_size,
            progress=not quiet,
            precision=precision,
        )
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    soup = cook(
        recipe,
        ingredients,
        evaluator=evaluator,
        log=log,
        accumulate=torch.float64 if accumulate == "fp64" else torch.float32,
        allow_nonfinite=allow_nonfinite,
        journal=True,  # greedy and learned resume after a crash; removed once the soup is saved
        **options,
    )
    digest = ""
    if main_rank:
        total = ingredients[0].nbytes
        with tqdm(
            total=total, unit="B", unit_scale=True, desc="writing soup", disable=quiet
        ) as bar:
            digest = soup.save(out, overwrite=overwrite, max_shard_size=shard, progress=bar.update)
        used = len(soup.used)
        click.echo(f"{soup.recipe} soup of {used}/{len(ingredients)} ingredients written to {out}")
        click.echo(f"sha256 {digest}")
    distributed.barrier()
    return distributed.broadcast_object(digest)
