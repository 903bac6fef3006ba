"""``modelsoup inspect PATH...``: what is in each ingredient, and can they be mixed."""

from __future__ import annotations

import json
from collections import Counter

import click

from modelsoup.cli.options import paths_argument
from modelsoup.cli.table import format_table
from modelsoup.errors import IncompatibleIngredientsError
from modelsoup.ingredients import Ingredient, check_compatible, load_ingredients


def describe(ing: Ingredient) -> dict:
    """One ingredient as a JSON-able dict (reads headers and hashes files, no weights)."""
    dtypes = Counter(i.dtype for i in ing.tensor_infos.values())
    return {
        "name": ing.name,
        "source": str(ing.source),
        "format": ing.format,
        "tensors": len(ing.tensor_infos),
        "parameters": ing.num_parameters,
        "dtypes": dict(sorted(dtypes.items())),
        "bytes": ing.nbytes,
        "digest": ing.digest,
        "metadata": ing.metadata,
    }


@click.command("inspect")
@paths_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(paths: tuple[str, ...], as_json: bool) -> None:
    """Show ingredients (format, tensors, parameters, dtypes, size, digest) and check that they
    can be mixed. Exits 1 when they are incompatible."""
    ingredients = load_ingredients(paths)
    rows = [describe(ing) for ing in ingredients]
    try:
        check_compatible(ingredients)
        verdict, problem = "compatible", None
    except IncompatibleIngredientsError as e:
        verdict, problem = "incompatible", str(e)
    if as_json:
        click.echo(
            json.dumps({"ingredients": rows, "verdict": verdict, "problems": problem}, indent=2)
        )
    else:
        click.echo(
            format_table(
                ["name", "format", "tensors", "parameters", "dtypes", "size", "digest"],
                [
                    [
                        r["name"],
                        r["format"],
                        r["tensors"],
                        f"{r['parameters']:,}",
                        ",".join(f"{k}x{v}" for k, v in r["dtypes"].items()),
                        _size(r["bytes"]),
                        r["digest"][:12],
                    ]
                    for r in rows
                ],
                align="lllrlrl",
            )
        )
        click.echo(f"\n{len(rows)} ingredients: {verdict}")
    if problem:
        raise IncompatibleIngredientsError(problem.split(":", 1)[1].strip() if as_json else problem)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
