"""``analyze(run_dir)``: every analysis of the paper on a run directory, written to RUN_DIR/analysis/.

A run directory is what ``modelsoup sweep`` (or ``modelsoup demo``) makes: ``init.safetensors``
(the shared initialization theta_0) and ``trials/trial_XXX.safetensors`` (the fine-tuned models),
and, once ``modelsoup compare`` ran, ``results.json``. :func:`analyze` writes, into
``RUN_DIR/analysis/``:

* ``analysis.json``: every number (schema ``modelsoup-analysis-v1``, see docs/analysis.md);
* ``interpolation.png``, ``fig2_plane.png``, ``fig3_angle_advantage.png``,
  ``fig4_soup_vs_ensemble.png``, ``eq1.png``, ``calibration.png``;
* ``analysis.md``: each figure with a paragraph on what it shows for this run.

Every soup it visits is evaluated through one :class:`~modelsoup.evaluation.evaluator.Evaluator`,
so a rerun (or a finer plane) only pays for what is new. Files are replaced on each run: they
are derived from the checkpoints and the cache. A section that cannot be computed (e.g. the
plane of two parallel deltas) is recorded as skipped, with the reason, and the rest goes on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsoup.errors import AnalysisError, IngredientError, RunDirError, TaskError

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.evaluation.task import Task
    from modelsoup.ingredients import Ingredient

SCHEMA = "modelsoup-analysis-v1"
OUT_DIR = "analysis"
INIT_CANDIDATES = ("init.safetensors", "init.safetensors.index.json", "init.pt", "init.bin", "init")
TRIALS_DIR = "trials"
FIGURES = {
    "interpolation": "interpolation.png",
    "plane": "fig2_plane.png",
    "angle": "fig3_angle_advantage.png",
    "soup_vs_ensemble": "fig4_soup_vs_ensemble.png",
    "eq1": "eq1.png",
    "calibration": "calibration.png",
}
MAKE_RUN = "`modelsoup sweep --task TASK --trials N -o RUN_DIR` (or `modelsoup demo`)"


@dataclass(frozen=True)
class AnalysisOptions:
    """How much to compute.

    Attributes:
        pairs: number of pairs for Figures 3, 4 and Eq. 1 (``None``: all, at most ``max_pairs``).
        max_pairs: the cap when ``pairs`` is not given.
        alphas: the interpolation grid.
        curves: interpolation curves: 1 = init -> best, 2 = also init -> second best,
            3 = also best -> second best (models ranked by held-out score).
        resolution: grid points per axis of the plane (``resolution**2`` soups).
        margin: room around the three models on the plane (fraction of their extent).
        plane_examples: evaluate the plane on at most this many (evenly spaced) examples
            per split (``None``: all).
        eq1_alphas: where Eq. 1 is checked along each pair's path.
        eq1_step: the finite-difference step for ``L_soup''``.
        seed: seeds the choice of pairs.
    """

    pairs: int | None = None
    max_pairs: int = 15
    alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))
    curves: int = 3
    resolution: int = 11
    margin: float = 0.3
    plane_examples: int | None = None
    eq1_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    eq1_step: float = 0.25
    seed: int = 0

    @classmethod
    def light(cls, **overrides: Any) -> AnalysisOptions:
        """The cheap subset ``modelsoup demo`` runs, about five full evaluations of one model:
        3 pairs (one midpoint soup each), 1 curve (init -> best, alpha 0, 0.5, 1), Eq. 1 at the
        midpoint only (no soups beyond the pairs'), a 4 x 4 plane on 128 examples per split,
        and calibration from the cache.

        Example:
            >>> AnalysisOptions.light().resolution
            4
        """
        base = cls(
            max_pairs=3,
            alphas=(0.0, 0.5, 1.0),
            curves=1,
            resolution=4,
            plane_examples=128,
            eq1_alphas=(0.5,),
            eq1_step=0.5,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Run:
    """The checkpoints of a run directory, and what ``sweep`` / ``compare`` recorded there."""

    path: Path
    init: Ingredient
    models: list[Ingredient]
    results: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None


def load_run(run_dir: str | Path) -> Run:
    """Find the init and the fine-tuned models of a run directory.

    Raises:
        RunDirError: no such directory, no init checkpoint, or fewer than two fine-tuned
            models, saying which command makes them.

    Example:
        >>> run = load_run("runs/demo")  # doctest: +SKIP
        >>> run.init.name, len(run.models)  # doctest: +SKIP
        ('init', 8)
    """
    from modelsoup.ingredients import load_ingredient, load_ingredients

    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory; make one with {MAKE_RUN}")
    init_path = next((path / c for c in INIT_CANDIDATES if (path / c).exists()), None)
    if init_path is None:
        raise RunDirError(
            f"{path}: no init checkpoint ({' / '.join(INIT_CANDIDATES[:3])}): the analyses measure "
            f"every model from the shared initialization theta_0; {MAKE_RUN} writes it"
        )
    trials = path / TRIALS_DIR
    if not trials.is_dir():
        raise RunDirError(
            f"{path}: no {TRIALS_DIR}/ folder of fine-tuned models; {MAKE_RUN} writes it"
        )
    try:
        init = load_ingredient(init_path)
        models = load_ingredients([trials])
    except IngredientError as e:
        raise RunDirError(f"{path}: {e}") from None
    if len(models) < 2:
        raise RunDirError(
            f"{trials}: {len(models)} fine-tuned model(s); the analyses need at least two "
            f"(run the sweep with more trials: {MAKE_RUN})"
        )
    return Run(
        path, init, models, _read_json(path / "results.json"), _read_json(path / "sweep.json")
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else None


def resolve_task(run: Run, task: Task | str | None) -> Task:
    """The task: given, else the ``task_ref`` (and ``task_kwargs``, if any) recorded in
    ``results.json``'s metadata, else the sweep's task if it is a built-in one.

    Example:
        >>> resolve_task(load_run("runs/toy"), "toy").name  # doctest: +SKIP
        'toy'
    """
    from modelsoup.evaluation.task import Task, builtin_tasks, load_task

    if isinstance(task, Task):
        return task
    if task:
        return load_task(task)
    meta = (run.results or {}).get("metadata") or {}
    ref = meta.get("task_ref")
    if ref:
        kwargs = meta.get("task_kwargs") or {}
        return load_task(ref, **(kwargs if isinstance(kwargs, dict) else {}))
    name = (run.sweep or {}).get("task")
    if name and name in builtin_tasks():
        return load_task(name)
    raise TaskError(
        f"{run.path}: the run does not record a task this command can load; pass --task TASK"
    )


def analyze(
    run_dir: str | Path,
    task: Task | str | None = None,
    pairs: int | None = None,
    light: bool = False,
    *,
    resolution: int | None = None,
    options: AnalysisOptions | None = None,
    evaluator: Evaluator | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every analysis on ``run_dir`` and write ``RUN_DIR/analysis/``; return analysis.json
    (as written: non-finite numbers are ``None``).

    Args:
        run_dir: a run directory (see :func:`load_run`).
        task: a :class:`Task`, a task reference, or ``None`` to use the one the run recorded.
        pairs: number of pairs for Figures 3, 4 and Eq. 1 (default: all, at most 15; light: 3).
        light: the cheap subset (:meth:`AnalysisOptions.light`), as ``modelsoup demo`` runs it.
        resolution: the plane's grid points per axis (default 11; light: 4).
        options: everything at once (overrides ``pairs``, ``light`` and ``resolution``).
        evaluator: reuse an evaluator (and its cache); else one is made for the task.
        device: ``cpu``, ``cuda`` or ``auto`` (for a new evaluator).
        batch_size: evaluation batch size (for a new evaluator).
        progress: show progress bars.
        log: receives one line per step.

    Raises:
        RunDirError: the run directory lacks the init or the fine-tuned models.
        AnalysisError: more pairs requested than the models make.

    Example:
        >>> doc = analyze("runs/demo", light=True)  # doctest: +SKIP
        >>> doc["pairs"]["correlation"]["angle_vs_advantage_id"]  # doctest: +SKIP
        0.41
    """
    from modelsoup.analysis.geometry import delta_gram
    from modelsoup.analysis.pairs import choose_pairs
    from modelsoup.ingredients import check_compatible

    say = log or (lambda message: None)
    started = time.perf_counter()
    run = load_run(run_dir)
    if options is None:
        make = AnalysisOptions.light if light else AnalysisOptions
        options = make(
            **{k: v for k, v in {"pairs": pairs, "resolution": resolution}.items() if v is not None}
        )
    k = len(run.models)
    n_pairs = (
        options.pairs if options.pairs is not None else min(options.max_pairs, k * (k - 1) // 2)
    )
    pair_index = choose_pairs(k, n_pairs, seed=options.seed)
    check_compatible([run.init, *run.models])
    if evaluator is None:
        from modelsoup.evaluation.evaluator import Evaluator

        evaluator = Evaluator(
            resolve_task(run, task), device=device, batch_size=batch_size, progress=progress
        )
    t = evaluator.task
    out = run.path / OUT_DIR
    evaluators = [evaluator]

    say(f"ranking {k} models by held-out score")
    heldout = {
        m.name: evaluator.metrics(evaluator.logits(m, t.heldout), t.heldout)["score"]
        for m in run.models
    }
    ranked = sorted(run.models, key=lambda m: -heldout[m.name])
    best, second = ranked[0], ranked[1]
    say("measuring the deltas from the init (angles)")
    gram = delta_gram(run.init, run.models)

    notes = _check_results_task(run, t)
    for note in notes:
        say(f"note: {note}")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "run_dir": str(run.path),
        "task": {
            "name": t.name,
            "heldout": t.heldout,
            "id_test": t.id_test,
            "shifts": list(t.shifts),
            "train": t.train,
        },  # fmt: skip
        "light": bool(light),
        "options": asdict(options),
        "models": {
            "init": run.init.name,
            "fine_tuned": [m.name for m in run.models],
            "heldout_score": heldout,
            "best": best.name,
            "second": second.name,
            "distance_from_init": {
                m.name: math.sqrt(max(0.0, float(gram[i, i]))) for i, m in enumerate(run.models)
            },
        },
        "notes": notes,
        "figures": {},
        "skipped": {},
        "seconds": {},
    }

    def section(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            doc[name] = fn()
        except AnalysisError as e:
            doc["skipped"][name] = str(e)
            say(f"{name}: skipped ({e})")
        doc["seconds"][name] = round(time.perf_counter() - t0, 3)

    def interpolation() -> list[dict[str, Any]]:
        from modelsoup.analysis.interpolation import interpolate, plot_curves

        ends = [(run.init, best), (run.init, second), (best, second)][: max(1, options.curves)]
        say(f"interpolation: {len(ends)} curve(s) x {len(options.alphas)} points")
        curves = [interpolate(evaluator, a, b, options.alphas) for a, b in ends]
        doc["figures"]["interpolation"] = plot_curves(curves, out / FIGURES["interpolation"]).name
        return [c.to_json() for c in curves]

    def plane() -> dict[str, Any]:
        from modelsoup.analysis.geometry import Plane
        from modelsoup.analysis.plane import evaluate_plane, plot_plane
        from modelsoup.analysis.sources import subsample

        small = subsample(evaluator, options.plane_examples)
        if small is not evaluator:
            evaluators.append(small)
        say(f"plane: {options.resolution} x {options.resolution} grid")
        i, j = run.models.index(best), run.models.index(second)
        known = Plane(float(gram[i, i]), float(gram[i, j]), float(gram[j, j]))
        res = evaluate_plane(small, run.init, best, second, resolution=options.resolution,
                             margin=options.margin, plane=known)  # fmt: skip
        doc["figures"]["plane"] = plot_plane(res, out / FIGURES["plane"]).name
        return {**res.to_json(), "examples": {s: len(small.task.split(s)) for s in
                                              (res.loss_split, res.error_split)}}  # fmt: skip

    def pairs_section() -> dict[str, Any]:
        from modelsoup.analysis.pairs import (
            analyze_pairs,
            plot_angle_advantage,
            plot_soup_vs_ensemble,
        )
        from modelsoup.analysis.stats import pearson

        say(f"pairs: {len(pair_index)} two-model soups")
        found = analyze_pairs(evaluator, run.init, run.models, pair_index, gram=gram)
        doc["figures"]["angle"] = plot_angle_advantage(found, out / FIGURES["angle"]).name
        doc["figures"]["soup_vs_ensemble"] = plot_soup_vs_ensemble(
            found, out / FIGURES["soup_vs_ensemble"]
        ).name
        groups = [g for g in ("id", "shift") if all(g in p.soup for p in found)]
        angles = [p.angle for p in found]
        return {
            "pairs": [p.to_json() for p in found],
            "correlation": {
                **{
                    f"angle_vs_advantage_{g}": pearson(angles, [p.advantage[g] for p in found])
                    for g in groups
                },
                **{
                    f"soup_vs_ensemble_{g}": pearson(
                        [p.ensemble[g] for p in found], [p.soup[g] for p in found]
                    )
                    for g in groups
                },
            },  # fmt: skip
            "soup_minus_ensemble": {
                g: {
                    "mean": sum(p.soup[g] - p.ensemble[g] for p in found) / len(found),
                    "soup_better": sum(p.soup[g] > p.ensemble[g] for p in found),
                    "ensemble_better": sum(p.soup[g] < p.ensemble[g] for p in found),
                }
                for g in groups
            },
        }

    def eq1() -> dict[str, Any]:
        from modelsoup.analysis.eq1 import analyze_pair, plot_eq1
        from modelsoup.analysis.stats import pearson

        say(f"eq1: {len(pair_index)} pairs x {len(options.eq1_alphas)} alphas")
        points = []
        for i, j in pair_index:
            points.extend(
                analyze_pair(
                    evaluator,
                    run.models[i],
                    run.models[j],
                    alphas=options.eq1_alphas,
                    step=options.eq1_step,
                )  # fmt: skip
            )
        xs, ys = [p.approximation for p in points], [p.measured for p in points]
        r = pearson(xs, ys)
        doc["figures"]["eq1"] = plot_eq1(points, out / FIGURES["eq1"], r=r).name
        agree = sum((x > 0) == (y > 0) for x, y in zip(xs, ys))
        return {
            "points": [p.to_json() for p in points],
            "correlation": r,
            "sign_agreement": agree / len(points),
            "split": t.id_test,
            "beta": {f"{p.a}|{p.b}": p.beta for p in points},
            "step": options.eq1_step,
        }

    def calibration() -> dict[str, Any]:
        from modelsoup.analysis.calibration import calibrate_methods, plot_calibration

        say("calibration: ECE of every method")
        cal = calibrate_methods(
            evaluator, [run.init, *run.models], run.results, fallback_pool=run.models
        )
        doc["figures"]["calibration"] = plot_calibration(
            cal, out / FIGURES["calibration"], id_split=t.id_test
        ).name
        return {
            "from": "results.json" if run.results else "fallback (no results.json)",
            "methods": [c.to_json() for c in cal],
        }

    section("interpolation", interpolation)
    section("plane", plane)
    section("pairs", pairs_section)
    section("eq1", eq1)
    section("calibration", calibration)
    doc["cost"] = {
        "forward_examples": sum(e.stats.forward_examples for e in evaluators),
        "cached_examples": sum(e.stats.cached_examples for e in evaluators),
        "model_loads": sum(e.stats.model_loads for e in evaluators),
        "seconds": round(time.perf_counter() - started, 3),
    }
    safe = _write(out, doc)
    say(f"wrote {out / 'analysis.md'}")
    return safe


def _check_results_task(run: Run, task: Task) -> list[str]:
    """Notes when results.json was made with another task or other split sizes."""
    recorded = (run.results or {}).get("task") or {}
    notes = []
    if recorded.get("name") and recorded["name"] != task.name:
        notes.append(
            f"results.json was made with task {recorded['name']!r}, the analyses use {task.name!r}"
        )
    sizes = recorded.get("n") or {}
    differ = [s for s, n in sizes.items() if s in task.splits and len(task.split(s)) != n]
    if differ:
        notes.append(
            "results.json was made on splits of other sizes ("
            + ", ".join(f"{s}: {sizes[s]} there, {len(task.split(s))} here" for s in differ)
            + "); pass the task compare used"
        )
    return notes


def _write(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    from modelsoup.analysis.report import render_markdown
    from modelsoup.atomic import atomic_write

    safe = json_safe(doc)
    atomic_write(out / "analysis.json", json.dumps(safe, indent=2, allow_nan=False) + "\n")
    atomic_write(out / "analysis.md", render_markdown(safe))
    return safe


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/Inf as ``None``, tuples as lists and numpy/torch scalars as numbers.

    Example:
        >>> json_safe({"a": (1.0, float("nan"))})
        {'a': [1.0, None]}
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):
        return json_safe(obj.item())
    return str(obj)
