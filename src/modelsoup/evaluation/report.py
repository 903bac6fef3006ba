"""Print and save a comparison: the terminal table, results.json, results.csv, report.md, fig1.png.

Every file is rendered in memory first, then written atomically (temporary file + rename), and
existing results are never replaced unless ``overwrite=True``: a failed run leaves the previous
results whole. docs/results.md documents the ``results.json`` schema.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import platform
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelsoup.errors import ModelSoupError, OutputError
from modelsoup.evaluation.compare import DESCRIPTIONS, SHIFT_AVG, ComparisonResult, MethodResult

logger = logging.getLogger(__name__)

SCHEMA = "modelsoup-results-v1"
FILES = ("results.json", "results.csv", "report.md", "fig1.png")
#: Where :func:`write_soups` saves soups, inside a run directory.
SOUPS_DIR = "soups"
CSV_FIELDS = (
    "method",
    "split",
    "role",
    "metric",
    "score",
    "accuracy",
    "ci_low",
    "ci_high",
    "p_value",
    "p_value_vs_best",
    "tied_with_best",
    "n",
    "cost",
)


def roles(result: ComparisonResult) -> dict[str, str]:
    """Column -> role: ``heldout`` (selection), ``id_test``, ``shift`` or ``shift_avg``.

    Example:
        >>> roles(result)  # doctest: +SKIP
        {'heldout': 'heldout', 'test': 'id_test', 'noisy': 'shift', 'shift_avg': 'shift_avg'}
    """
    out = {result.task["heldout"]: "heldout", result.task["id_test"]: "id_test"}
    out.update({s: "shift" for s in result.task["shifts"]})
    if result.task["shifts"]:
        out[SHIFT_AVG] = "shift_avg"
    return out


# --------------------------------------------------------------------------------------------
# Terminal


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _markers(m: Mapping[str, Any], is_best: bool) -> str:
    out = "*" if is_best else ("=" if m.get("tied_with_best") else "")
    p = m.get("p_value")
    if p is not None and p < 0.05:
        out += "+" if m.get("delta_vs_best_individual", 0) > 0 else "-"
    return out


def format_table(result: ComparisonResult, *, ci: bool = False, digits: int = 2) -> str:
    """The paper's table for the terminal: one row per method, scores in percent.

    Markers: ``*`` best in the column (the oracle is not a contender); ``=`` not significantly
    different from the best (alpha 0.05); ``+``/``-`` significantly better/worse than the best
    individual model (exact McNemar per split, permutation test for the shift average).

    Example:
        >>> print(format_table(result))  # doctest: +SKIP
    """
    from modelsoup.cli.table import format_table as align

    columns = result.columns
    role = roles(result)
    header = ["method"]
    for c in columns:
        label = {"heldout": f"{c} (sel.)", "id_test": f"{c} (ID)", "shift_avg": "shift avg"}.get(
            role[c], c
        )
        header.append(label)
    header += ["cost", "used"]
    rows = []
    for name, row in result.methods.items():
        cells: list[str] = [name]
        for c in columns:
            m = row.metrics[c]
            cell = f"{_pct(m['score'], digits)}{_markers(m, result.best.get(c) == name)}"
            if ci:
                cell += f" [{_pct(m['ci_low'], 1)}, {_pct(m['ci_high'], 1)}]"
            cells.append(cell)
        cells += [f"{row.cost}x", _used(result, row)]
        rows.append(cells)
    metrics = sorted(set(result.task["metric"].values()))
    legend = (
        f"{result.task['name']}: {', '.join(metrics)} in %, "
        f"held-out = selection split (not a result). * best per column (oracle excluded); "
        "= not significantly different from the best; +/- significantly above/below "
        f"best_individual (p < {result.settings['alpha']}); cost = forward passes per input."
    )
    table = align(header, rows, align="l" + "r" * (len(header) - 1))
    return table + "\n\n" + textwrap.fill(legend, width=100)


def _used(result: ComparisonResult, row: MethodResult) -> str:
    pool = len([n for n in result.ingredients if n != result.init])
    if isinstance(row.ingredients, dict):
        return "per split"
    return f"{len(row.ingredients)}/{pool}"


# --------------------------------------------------------------------------------------------
# results.json / results.csv


def machine_info() -> dict[str, Any]:
    """Host, platform, Python/torch versions and CPU/GPU counts, for provenance."""
    import torch

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def results_dict(
    result: ComparisonResult, *, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``results.json`` document (schema in docs/results.md); JSON-safe (no NaN).

    Example:
        >>> doc = results_dict(result)  # doctest: +SKIP
        >>> doc["methods"]["greedy_soup"]["metrics"]["shift_avg"]["accuracy"]  # doctest: +SKIP
        0.713
    """
    from modelsoup import __version__

    doc = {
        "schema": SCHEMA,
        "task": {**result.task, "roles": roles(result)},
        "columns": result.columns,
        "methods": {
            name: {
                "title": row.title,
                "kind": row.kind,
                "description": DESCRIPTIONS.get(name, ""),
                "ingredients": row.ingredients,
                "cost": row.cost,
                "metrics": row.metrics,
                "info": row.info,
            }
            for name, row in result.methods.items()
        },
        "ingredients": {
            name: {"is_init": name == result.init, "metrics": metrics}
            for name, metrics in result.ingredients.items()
        },
        "best": result.best,
        "settings": result.settings,
        "metadata": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "modelsoup_version": __version__,
            "machine": machine_info(),
            **dict(metadata or {}),
        },
    }
    return _json_safe(doc)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return _json_safe(obj.item())
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    return str(obj)


def results_csv(result: ComparisonResult) -> str:
    """One row per method x column (split or ``shift_avg``).

    Example:
        >>> print(results_csv(result).splitlines()[0])  # doctest: +SKIP
        method,split,role,metric,score,accuracy,ci_low,ci_high,p_value,...
    """
    role = roles(result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for name, row in result.methods.items():
        for c in result.columns:
            m = row.metrics[c]
            metric = m.get("metric") or _shift_metric(result)
            writer.writerow(
                {
                    "method": name,
                    "split": c,
                    "role": role[c],
                    "metric": metric,
                    "score": m["score"],
                    "accuracy": m["accuracy"],
                    "ci_low": m["ci_low"],
                    "ci_high": m["ci_high"],
                    "p_value": "" if m.get("p_value") is None else m["p_value"],
                    "p_value_vs_best": ""
                    if m.get("p_value_vs_best") is None
                    else m["p_value_vs_best"],
                    "tied_with_best": m.get("tied_with_best"),
                    "n": m["n"],
                    "cost": row.cost,
                }
            )
    return buf.getvalue()


def _shift_metric(result: ComparisonResult) -> str:
    metrics = {result.task["metric"][s] for s in result.task["shifts"]}
    return metrics.pop() if len(metrics) == 1 else "mixed"


# --------------------------------------------------------------------------------------------
# report.md


def _p(p: float | None) -> str:
    if p is None:
        return "ref."
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_markdown(result: ComparisonResult, *, figure: str | None = "fig1.png") -> str:
    """The report: the table with 95% intervals, p-values, each row explained, Figure 1.

    Example:
        >>> Path("report.md").write_text(render_markdown(result))  # doctest: +SKIP
    """
    columns = result.columns
    role = roles(result)
    t = result.task
    head = "| method | " + " | ".join(_md_col(c, role[c]) for c in columns) + " | cost | used |"
    sep = "| --- | " + " | ".join("---:" for _ in columns) + " | ---: | ---: |"
    lines = [head, sep]
    for name, row in result.methods.items():
        cells = []
        for c in columns:
            m = row.metrics[c]
            value = f"{_pct(m['score'])} [{_pct(m['ci_low'], 1)}, {_pct(m['ci_high'], 1)}]"
            if m.get("tied_with_best"):
                value = f"**{value}**"
            if result.best.get(c) == name:
                value += " \\*"
            cells.append(value)
        lines.append(
            f"| {row.title} (`{name}`) | "
            + " | ".join(cells)
            + f" | {row.cost} | {_used(result, row)} |"
        )
    table = "\n".join(lines)

    p_lines = [
        "| method | " + " | ".join(_md_col(c, role[c]) for c in columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for name, row in result.methods.items():
        p_lines.append(
            f"| `{name}` | " + " | ".join(_p(row.metrics[c].get("p_value")) for c in columns) + " |"
        )
    p_table = "\n".join(p_lines)

    ing_lines = [
        "| ingredient | " + " | ".join(_md_col(c, role[c]) for c in columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for name, metrics in result.ingredients.items():
        label = f"{name} (init)" if name == result.init else name
        ing_lines.append(
            f"| {label} | " + " | ".join(_pct(metrics[c]["score"]) for c in columns) + " |"
        )

    explain = "\n".join(
        f"- **{row.title}** (`{name}`): {DESCRIPTIONS.get(name, '')} Uses {_uses(row)}."
        for name, row in result.methods.items()
    )
    kinds = set(t["metric"].values())
    metrics = (
        kinds.pop().replace("_", " ")
        if len(kinds) == 1
        else ", ".join(f"{s}: {m.replace('_', ' ')}" for s, m in t["metric"].items())
    )
    fig = (
        f"\n## Figure 1\n\n![Figure 1: {t['id_test']} vs shift average]({figure})\n\n"
        "Every ingredient (grey), the initialization if given (black diamond) and every "
        "method.\n"
        if figure
        else ""
    )
    s = result.settings
    return f"""# Model soups on `{t["name"]}`

Held-out (selection) split: `{t["heldout"]}` (used to choose; not a result). In-distribution
test: `{t["id_test"]}`. Distribution shifts: {", ".join(f"`{x}`" for x in t["shifts"]) or "none"}
(their mean is the shift average). Metrics: {metrics}. Cells: score in % [95% confidence interval].

{table}

**Bold**: not significantly different from the best entry of the column (alpha = {s["alpha"]});
\\*: the best entry (the oracle is not a contender). Intervals: Wilson for accuracy on one split,
a stratified bootstrap ({s["n_bootstrap"]} resamples) for balanced accuracy and the shift average.

## p-values against the best individual model

Exact McNemar test per split; paired sign-flip permutation test ({s["n_permutations"]}
permutations) for the shift average.

{p_table}

## Rows

{explain}

## Ingredients

{ing_lines[0]}
{chr(10).join(ing_lines[1:])}
{fig}
Settings: seed {s["seed"]}, greedy rule `{s["rule"]}`. See docs/significance.md for the tests.
"""


def _md_col(column: str, role: str) -> str:
    return {
        "heldout": f"{column} (held-out)",
        "id_test": f"{column} (ID)",
        "shift_avg": "shift avg",
    }.get(role, column)


def _uses(row: MethodResult) -> str:
    if isinstance(row.ingredients, dict):
        return ", ".join(f"{n} on {s}" for s, n in row.ingredients.items())
    names = ", ".join(f"`{n}`" for n in row.ingredients)
    return f"{len(row.ingredients)} ingredient(s): {names}"


# --------------------------------------------------------------------------------------------
# Writing


def write_results(
    result: ComparisonResult,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    figure: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``report.md`` and ``fig1.png`` into ``run_dir``.

    Everything is rendered before anything is written; each file is written atomically. Figure 1
    is skipped (with a warning) when matplotlib is missing or the task has no shift splits.

    Raises:
        OutputError: one of the files exists and ``overwrite`` is false.

    Example:
        >>> write_results(compare(ings, ev), "runs/toy")  # doctest: +SKIP
        {'results.json': PosixPath('runs/toy/results.json'), ...}
    """
    from modelsoup.atomic import atomic_write

    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=overwrite)
    png: bytes | None = None
    if figure:
        from modelsoup.evaluation.figures import figure1_png

        try:
            png = figure1_png(result)
        except ModelSoupError as e:
            logger.warning("skipping Figure 1: %s", e)
    contents: dict[str, str | bytes] = {
        "results.json": json.dumps(
            results_dict(result, metadata=metadata), indent=2, allow_nan=False
        )
        + "\n",
        "results.csv": results_csv(result),
        "report.md": render_markdown(result, figure="fig1.png" if png else None),
    }
    if png:
        contents["fig1.png"] = png
    written = {}
    for name, data in contents.items():
        atomic_write(run_dir / name, data)
        written[name] = run_dir / name
    return written


def check_run_dir(run_dir: str | Path, *, overwrite: bool = False, soups: bool = False) -> None:
    """Refuse, before any work, a run directory that already holds results (or soups, when
    ``soups`` are to be saved) unless ``overwrite``.

    Example:
        >>> check_run_dir("runs/toy")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a directory")
    outputs = [*FILES, *([SOUPS_DIR] if soups else [])]
    existing = [f for f in outputs if os.path.lexists(run_dir / f)]
    if existing and not overwrite:
        raise OutputError(
            f"{run_dir}: already holds {', '.join(existing)} (pass --overwrite to replace them)"
        )


def write_soups(
    result: ComparisonResult,
    run_dir: str | Path,
    names: Sequence[str] = ("greedy_soup",),
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Save soups of a comparison as ``run_dir/soups/<name>/`` (weights, soup.json, soup card).

    Each soup is mixed tensor by tensor from its ingredients as it is written.

    Raises:
        ModelSoupError: a name is not a soup row of ``result``.
        OutputError: a soup directory exists and ``overwrite`` is false.

    Example:
        >>> write_soups(compare(ings, ev), "runs/toy")  # doctest: +SKIP
        {'greedy_soup': PosixPath('runs/toy/soups/greedy_soup')}
    """
    unknown = [n for n in names if n not in result.soups]
    if unknown:
        raise ModelSoupError(
            f"no soup {', '.join(map(repr, unknown))} in this comparison "
            f"(soups: {', '.join(result.soups) or 'none'})"
        )
    written = {}
    for name in names:
        out = Path(run_dir) / SOUPS_DIR / name
        result.soups[name].save(out, overwrite=overwrite)
        written[name] = out
    return written
