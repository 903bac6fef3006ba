"""Options shared by several commands, and helpers to turn typed option models into click flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args, get_origin

import click


def quiet(ctx: click.Context) -> bool:
    """Whether ``-q`` was given to the top-level command."""
    root = ctx.find_root()
    return bool(root.obj and root.obj.get("quiet"))


def paths_argument(f: Callable) -> Callable:
    """``PATH...``: files, sharded indexes, model directories, folders or globs."""
    return click.argument("paths", nargs=-1, required=True, metavar="PATH...")(f)


def task_option(required: bool = True) -> Callable:
    return click.option(
        "--task",
        "task_ref",
        required=required,
        metavar="TASK",
        help="A built-in task name (see `modelsoup tasks`), package.module:factory or file.py:factory.",
    )


def device_option(f: Callable) -> Callable:
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "cpu", "cuda"]),
        help="Where to run models (auto: cuda when available; one GPU per rank under torchrun).",
    )(f)


def precision_option(f: Callable) -> Callable:
    return click.option(
        "--precision",
        default="fp32",
        show_default=True,
        type=click.Choice(["fp32", "bf16"]),
        help="Evaluation precision; bf16 (bfloat16 autocast) needs a GPU and is cached apart.",
    )(f)


def join_ranks(device: str) -> tuple[Any, bool]:
    """Join torchrun's process group when launched by it; return this rank's device and whether
    it is rank 0 (the one that prints and writes). Outside torchrun: the device and ``True``."""
    from modelsoup import distributed

    dev = distributed.init(device)
    return dev, distributed.is_main()


def rank_zero_only(command: str) -> bool:
    """For commands that do not split work between ranks: whether this process should run it.

    Under torchrun rank 0 runs the command alone (as a single process) and the other ranks
    return at once, so nothing is computed or written twice.
    """
    import os

    from modelsoup import distributed

    if not distributed.launched_by_torchrun() or int(os.environ["RANK"]) == 0:
        return True
    click.echo(f"rank {os.environ['RANK']}: `modelsoup {command}` runs on rank 0 only", err=True)
    return False


def run_dir_option(help: str, *, required: bool = True) -> Callable[[Callable], Callable]:
    """``-o/--out RUN_DIR``: where a command writes its results (``run_dir`` parameter)."""
    return click.option(
        "-o",
        "--out",
        "run_dir",
        required=required,
        default=None,
        type=click.Path(),
        metavar="RUN_DIR",
        help=help,
    )


def output_options(f: Callable) -> Callable:
    f = click.option(
        "--overwrite", is_flag=True, help="Replace OUT if it exists (never an input)."
    )(f)
    f = click.option(
        "-o",
        "--out",
        "out",
        required=True,
        type=click.Path(),
        metavar="OUT",
        help="Output directory.",
    )(f)
    return f


def model_option_flags(model: type, f: Callable) -> Callable:
    """Add one click option per field of a pydantic model (recipe options -> CLI flags).

    Tuples of floats become comma-separated lists; bools become ``--flag/--no-flag``.
    """
    for name, field in reversed(list(model.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        annotation = field.annotation
        required = field.is_required()
        default = None if required else field.default
        if annotation is bool:
            f = click.option(
                f"{flag}/--no-{name.replace('_', '-')}",
                name,
                default=default,
                show_default=True,
                help=help_text,
            )(f)
        elif get_origin(annotation) is tuple:
            inner = get_args(annotation)[0]
            f = click.option(
                flag,
                name,
                required=required,
                callback=_csv(inner),
                default=",".join(map(str, default)) if default else None,
                metavar="X1,X2,...",
                help=help_text,
            )(f)
        else:
            choices = get_args(annotation) if get_origin(annotation) is not None else ()
            if choices and all(isinstance(c, str) for c in choices):
                kind: Any = click.Choice(choices)
            elif choices:
                kind = next((c for c in choices if c is not type(None)), str)
            else:
                kind = annotation
            f = click.option(
                flag,
                name,
                type=kind,
                required=required,
                default=default,
                show_default=not required,
                help=help_text,
            )(f)
    return f


def _csv(kind: type) -> Callable:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        try:
            return tuple(kind(x) for x in value.split(",") if x.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__} values") from None

    return parse
