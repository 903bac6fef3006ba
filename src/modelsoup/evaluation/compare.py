"""The paper's table: soups, ensembles and baselines on held-out, ID and shift splits.

:func:`compare` evaluates every method with one :class:`~modelsoup.evaluation.evaluator.Evaluator`
(so every ingredient and every soup is evaluated once per split, from the cache afterwards),
then tests each method against the best individual model and against the best entry of each
column, and attaches 95% confidence intervals. :mod:`modelsoup.evaluation.report` prints and
writes the result.

Rows (method names are stable; ``results.json`` uses them):

========================  ========================================================  ====
``best_individual``       the ingredient with the best held-out score                1
``uniform_soup``          the average of every ingredient                           1
``greedy_soup``           Recipe 1: add ingredients by held-out score if not worse  1
``greedy_soup_random``    the same, trying ingredients in a random order (seeded)   1
``learned_soup``          mixing weights fitted on held-out data (if registered)    1
``learned_soup_by_layer`` one weight per ingredient per tensor (if registered)      1
``ensemble``              the mean of every ingredient's logits                     k
``greedy_ensemble``       Recipe 1 over ensemble members                            |S|
``oracle``                the best ingredient *on each test split* (not a method)  1
========================  ========================================================  ====
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modelsoup.errors import ModelSoupError, RecipeError
from modelsoup.evaluation.ensemble import ensemble_logits, greedy_ensemble
from modelsoup.evaluation.metrics import correct as correct_of
from modelsoup.evaluation.significance import (
    ALPHA,
    bootstrap_interval,
    mcnemar,
    permutation_test,
    strata_for,
    wilson_interval,
)

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient
    from modelsoup.soup import Soup

logger = logging.getLogger(__name__)

SHIFT_AVG = "shift_avg"
METHODS = (
    "best_individual",
    "uniform_soup",
    "greedy_soup",
    "greedy_soup_random",
    "learned_soup",
    "learned_soup_by_layer",
    "ensemble",
    "greedy_ensemble",
    "oracle",
)
TITLES = {
    "best_individual": "Best individual (held-out)",
    "uniform_soup": "Uniform soup",
    "greedy_soup": "Greedy soup",
    "greedy_soup_random": "Greedy soup (random order)",
    "learned_soup": "Learned soup",
    "learned_soup_by_layer": "Learned soup (by layer)",
    "ensemble": "Ensemble",
    "greedy_ensemble": "Greedy ensemble",
    "oracle": "Oracle (best per test split)",
}
DESCRIPTIONS = {
    "best_individual": "the single ingredient with the best held-out score (the reference for p-values).",
    "uniform_soup": "the plain weight average of every ingredient.",
    "greedy_soup": "the paper's Recipe 1: ingredients sorted by held-out score are added to the "
    "soup when the held-out score does not drop.",
    "greedy_soup_random": "Recipe 1 with the ingredients tried in a random (seeded) order.",
    "learned_soup": "mixing weights (and a temperature) fitted by gradient descent on the held-out split.",
    "learned_soup_by_layer": "as the learned soup, with one weight per ingredient per tensor.",
    "ensemble": "the mean of every ingredient's logits; costs one forward pass per ingredient.",
    "greedy_ensemble": "Recipe 1 over ensemble members: members are added when the held-out score "
    "of the mean logits does not drop.",
    "oracle": "the best ingredient chosen separately on each test split, using that split's "
    "labels: an upper bound for picking one model, not a method.",
}
LEARNED = ("learned_soup", "learned_soup_by_layer")


@dataclass
class MethodResult:
    """One row of the table.

    Attributes:
        name: the method name (one of :data:`METHODS`).
        title: a readable name.
        kind: ``"individual"``, ``"soup"``, ``"ensemble"`` or ``"oracle"``.
        ingredients: the ingredients it uses (for the oracle: split -> ingredient).
        cost: inference cost relative to one model (forward passes per input).
        metrics: column (split name or ``"shift_avg"``) -> metrics: ``accuracy``, ``score``
            (the split's headline metric), ``ci_low``/``ci_high`` (95% interval of ``score``),
            ``p_value`` and ``delta_vs_best_individual`` (vs ``best_individual``),
            ``p_value_vs_best`` and ``tied_with_best``
            (vs the best non-oracle row of that column), plus ``nll``, ``ece`` and counts.
        info: what the recipe recorded (greedy trajectory, weights, ...).
        correct: per split, the per-example correctness (not serialized).
    """

    name: str
    title: str
    kind: str
    ingredients: list[str] | dict[str, str]
    cost: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class ComparisonResult:
    """What :func:`compare` returns: every row, every ingredient, and the task's split roles.

    Attributes:
        task: ``name``, ``heldout``, ``id_test``, ``shifts``, ``metric`` (per split) and ``n``.
        methods: method name -> :class:`MethodResult`, in table order.
        ingredients: ingredient name -> column -> metrics (with confidence intervals).
        init: the name of the ingredient treated as the initialization (not used by any
            method), if any.
        best: column -> the best non-oracle method in that column.
        settings: seed, rule, number of permutations, alpha.
        soups: the soups cooked for the soup rows (lazy: nothing is mixed until one is saved
            with :func:`modelsoup.evaluation.report.write_soups`); not part of ``results.json``.
    """

    task: dict[str, Any]
    methods: dict[str, MethodResult]
    ingredients: dict[str, dict[str, dict[str, Any]]]
    init: str | None
    best: dict[str, str]
    settings: dict[str, Any]
    soups: dict[str, Soup] = field(default_factory=dict, repr=False, compare=False)

    @property
    def columns(self) -> list[str]:
        """Held-out, ID test, each shift, then ``shift_avg`` (when there are shifts)."""
        shifts = list(self.task["shifts"])
        return [
            self.task["heldout"],
            self.task["id_test"],
            *shifts,
            *([SHIFT_AVG] if shifts else []),
        ]


def available_methods() -> tuple[str, ...]:
    """The method names :func:`compare` can compute here (learned soups need the recipe).

    Example:
        >>> "greedy_ensemble" in available_methods()
        True
    """
    return tuple(m for m in METHODS if m not in LEARNED or _learned_registered())


def compare(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    *,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    rule: str = ">=",
    learned: Mapping[str, Any] | None = None,
    init_name: str | None = "init",
    n_permutations: int = 10_000,
    n_bootstrap: int = 10_000,
    log: Callable[[str], None] | None = None,
) -> ComparisonResult:
    """Evaluate the paper's methods and baselines and test them against the best individual.

    Args:
        ingredients: the fine-tuned models (from :func:`modelsoup.load_ingredients`).
        evaluator: scores predictors on the task's splits and caches per-example logits.
        methods: rows to compute (default: every row in :data:`METHODS` that is available;
            learned soups only when a ``learned`` recipe is registered). ``best_individual``
            is always computed: it is the reference for p-values.
        seed: seeds the random greedy order, the learned soups, and the permutation and
            bootstrap resampling.
        rule: the greedy acceptance rule, ``">="`` (the paper) or ``">"``.
        learned: extra options for the ``learned`` recipe (e.g. ``{"epochs": 2}``).
        init_name: an ingredient with this name is the shared initialization: it is evaluated
            and plotted but used by no method. ``None`` treats every ingredient alike.
        n_permutations: sign flips of the shift-average permutation test.
        n_bootstrap: resamples of the bootstrap intervals.
        log: receives progress messages.

    Returns:
        A :class:`ComparisonResult`; see :mod:`modelsoup.evaluation.report` to print or save it.

    Example:
        >>> ev = Evaluator(load_task("toy"))  # doctest: +SKIP
        >>> result = compare(load_ingredients(["trials/"]), ev)  # doctest: +SKIP
        >>> result.methods["greedy_soup"].metrics["shift_avg"]["accuracy"]  # doctest: +SKIP
        0.71
    """
    say = log or (lambda message: None)
    task = evaluator.task
    wanted = _wanted_methods(methods)
    if SHIFT_AVG in task.splits:
        raise ModelSoupError(f"task {task.name!r}: a split may not be named {SHIFT_AVG!r}")
    ingredients = list(ingredients)
    if not ingredients:
        raise ModelSoupError("compare needs at least one ingredient")
    init = next((i for i in ingredients if init_name and i.name == init_name), None)
    pool = [i for i in ingredients if i is not init]
    if not pool:
        raise ModelSoupError(f"compare: the only ingredient is the init ({init_name!r})")
    splits = [task.heldout, task.id_test, *task.shifts]
    stats = _Stats(evaluator, splits, seed, n_bootstrap, n_permutations)

    say(f"evaluating {len(ingredients)} ingredients on {len(splits)} splits")
    ing_rows = {}
    for ing in ingredients:
        ing_rows[ing.name] = stats.row(ing.name, "ingredient", [ing.name], 1, _of(evaluator, ing))
        ing.release()  # a pickle checkpoint is re-read only if a soup needs it
    best = max(pool, key=lambda i: ing_rows[i.name].metrics[task.heldout]["score"])  # first on ties
    soups: dict[str, Soup] = {}
    rows = {
        "best_individual": stats.row(
            "best_individual", "individual", [best.name], 1, _of(evaluator, best)
        )
    }
    for name in METHODS:
        if name in rows or name not in wanted:
            continue
        if name in _SOUP_RECIPES:
            say(f"cooking {name}")
            options = _soup_options(name, seed=seed, rule=rule, learned=learned)
            rows[name], soups[name] = _soup_row(name, pool, evaluator, stats, options, say)
        elif name == "ensemble":
            members = [i.name for i in pool]
            rows[name] = stats.row(
                name,
                "ensemble",
                members,
                len(pool),
                lambda s: ensemble_logits(evaluator.logits(i, s) for i in pool),
            )
        elif name == "greedy_ensemble":
            rows[name] = _greedy_ensemble_row(pool, evaluator, stats, rule)
        elif name == "oracle":
            rows[name] = stats.oracle([ing_rows[i.name] for i in pool])

    stats.test_against(rows, rows["best_individual"])
    best_per_column = stats.mark_best(rows)
    return ComparisonResult(
        task={
            "name": task.name,
            "heldout": task.heldout,
            "id_test": task.id_test,
            "shifts": list(task.shifts),
            "metric": {s: task.metric_for(s) for s in splits},
            "n": {s: len(task.split(s)) for s in splits},
            "num_classes": task.num_classes,
        },
        methods={m: rows[m] for m in METHODS if m in rows},
        ingredients={name: row.metrics for name, row in ing_rows.items()},
        init=init.name if init is not None else None,
        best=best_per_column,
        settings={
            "seed": seed,
            "rule": rule,
            "alpha": ALPHA,
            "n_permutations": n_permutations,
            "n_bootstrap": n_bootstrap,
            "learned": dict(learned or {}),
        },
        soups=soups,
    )


_SOUP_RECIPES = {
    "uniform_soup": "uniform",
    "greedy_soup": "greedy",
    "greedy_soup_random": "greedy",
    "learned_soup": "learned",
    "learned_soup_by_layer": "learned",
}


def _soup_options(
    name: str, *, seed: int, rule: str, learned: Mapping[str, Any] | None
) -> dict[str, Any]:
    if name == "greedy_soup":
        return {"rule": rule}
    if name == "greedy_soup_random":
        return {"rule": rule, "order": "random", "seed": seed}
    if name in LEARNED:
        return {**_learned_options(seed, learned), "by_layer": name == "learned_soup_by_layer"}
    return {}


def _of(evaluator: Evaluator, source: Any) -> Callable[[str], torch.Tensor]:
    """``split -> logits`` of one source, read through the evaluator (and its cache)."""
    return lambda split: evaluator.logits(source, split)


def _soup_row(
    name: str,
    pool: list[Ingredient],
    evaluator: Evaluator,
    stats: _Stats,
    options: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[MethodResult, Soup]:
    from modelsoup.recipes import cook

    recipe = _SOUP_RECIPES[name]
    soup = cook(recipe, pool, evaluator=evaluator, log=say, **options)
    row = stats.row(name, "soup", [i.name for i in soup.used], 1, _of(evaluator, soup))
    row.info = {"recipe": recipe, "options": soup.options, **_jsonable_info(soup.info)}
    row.info["weights"] = dict(zip([i.name for i in pool], soup.mixture.weights))
    return row, soup


class _MemberLogits(Sequence):
    """Members' logits on one split, read from the evaluator's cache when indexed."""

    def __init__(self, evaluator: Evaluator, members: list[Ingredient], split: str) -> None:
        self.evaluator, self.members, self.split = evaluator, members, split

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        return self.evaluator.logits(self.members[i], self.split)


def _greedy_ensemble_row(
    pool: list[Ingredient], evaluator: Evaluator, stats: _Stats, rule: str
) -> MethodResult:
    from modelsoup.evaluation.metrics import METRIC_FUNCTIONS

    heldout = evaluator.task.heldout
    found = greedy_ensemble(
        _MemberLogits(evaluator, pool, heldout),
        evaluator.task.split(heldout).labels,
        rule=rule,
        score=METRIC_FUNCTIONS[evaluator.task.metric_for(heldout)],
    )
    chosen = [pool[j] for j in found.chosen]
    row = stats.row(
        "greedy_ensemble",
        "ensemble",
        [i.name for i in chosen],
        len(chosen),
        lambda s: ensemble_logits(evaluator.logits(i, s) for i in chosen),
    )
    size = 0
    trajectory = []
    for step in found.trajectory:
        size += step["accepted"]
        trajectory.append(
            {
                "candidate": pool[step["candidate"]].name,
                "index": step["candidate"],
                "heldout_score": step["score"],
                "accepted": step["accepted"],
                "ensemble_size": size,
            }
        )
    row.info = {
        "rule": rule,
        "order": [pool[j].name for j in found.order],
        "trajectory": trajectory,
    }
    return row


# --------------------------------------------------------------------------------------------


class _Stats:
    """Metrics, intervals and tests for rows, sharing the task's labels, strata and seed."""

    def __init__(
        self,
        evaluator: Evaluator,
        splits: list[str],
        seed: int,
        n_bootstrap: int,
        n_permutations: int,
    ) -> None:
        self.evaluator = evaluator
        self.task = evaluator.task
        self.splits = splits
        self.shifts = list(self.task.shifts)
        self.strata = {
            s: strata_for(self.task.split(s).labels, self.task.metric_for(s)) for s in splits
        }
        self.seed = seed
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations

    def row(
        self,
        name: str,
        kind: str,
        used: list[str],
        cost: int,
        logits_of: Callable[[str], torch.Tensor],
    ) -> MethodResult:
        """Score ``logits_of(split)`` on every split; keep metrics and correctness, not logits."""
        metrics: dict[str, dict[str, Any]] = {}
        correct: dict[str, np.ndarray] = {}
        for s in self.splits:
            logits = logits_of(s)
            metrics[s] = dict(self.evaluator.metrics(logits, s))
            correct[s] = correct_of(logits, self.task.split(s).labels).cpu().numpy()
        row = MethodResult(name, TITLES.get(name, name), kind, used, cost, metrics, {}, correct)
        self._finish(row)
        return row

    def _finish(self, row: MethodResult) -> None:
        """Add confidence intervals and the shift average to a row whose splits are scored."""
        for s in self.splits:
            m = row.metrics[s]
            if self.task.metric_for(s) == "accuracy":
                lo, hi = wilson_interval(int(row.correct[s].sum()), int(row.correct[s].size))
                m["ci_method"] = "wilson"
            else:
                lo, hi = bootstrap_interval(
                    [row.correct[s]], [self.strata[s]], n_resamples=self.n_bootstrap, seed=self.seed
                )
                m["ci_method"] = "bootstrap"
            m["ci_low"], m["ci_high"] = lo, hi
        if self.shifts:
            per = [row.metrics[s] for s in self.shifts]
            avg: dict[str, Any] = {
                key: float(np.mean([m[key] for m in per]))
                for key in ("accuracy", "balanced_accuracy", "score", "nll", "ece")
                if all(key in m for m in per)
            }
            avg["n"] = int(sum(m["n"] for m in per))
            avg["splits"] = list(self.shifts)
            lo, hi = bootstrap_interval(
                [row.correct[s] for s in self.shifts],
                [self.strata[s] for s in self.shifts],
                n_resamples=self.n_bootstrap,
                seed=self.seed,
            )
            avg["ci_low"], avg["ci_high"], avg["ci_method"] = lo, hi, "bootstrap"
            row.metrics[SHIFT_AVG] = avg

    def oracle(self, candidates: list[MethodResult]) -> MethodResult:
        """Per split, the candidate with the best score on that split (first on ties)."""
        chosen: dict[str, str] = {}
        metrics: dict[str, dict[str, Any]] = {}
        correct: dict[str, np.ndarray] = {}
        for s in self.splits:
            top = max(candidates, key=lambda r: r.metrics[s]["score"])  # max keeps the first
            chosen[s] = top.name
            metrics[s] = {k: v for k, v in top.metrics[s].items() if not k.startswith("ci_")}
            correct[s] = top.correct[s]
        row = MethodResult("oracle", TITLES["oracle"], "oracle", chosen, 1, metrics, {}, correct)
        self._finish(row)
        row.info = {"chosen_on": "each split's own labels", "chosen": chosen}
        return row

    def p_value(self, a: MethodResult, b: MethodResult, column: str) -> float:
        """McNemar on one split; the permutation test for the shift average."""
        if column == SHIFT_AVG:
            return permutation_test(
                [a.correct[s] for s in self.shifts],
                [b.correct[s] for s in self.shifts],
                [self.strata[s] for s in self.shifts],
                n_permutations=self.n_permutations,
                seed=self.seed,
            ).p_value
        return mcnemar(a.correct[column], b.correct[column]).p_value

    def columns(self) -> list[str]:
        return [*self.splits, *([SHIFT_AVG] if self.shifts else [])]

    def test_against(self, rows: dict[str, MethodResult], ref: MethodResult) -> None:
        """``p_value`` and ``delta_vs_best_individual`` of every row against ``ref``."""
        for row in rows.values():
            for c in self.columns():
                m = row.metrics[c]
                m["p_value"] = None if row is ref else self.p_value(row, ref, c)
                m["delta_vs_best_individual"] = m["score"] - ref.metrics[c]["score"]

    def mark_best(self, rows: dict[str, MethodResult]) -> dict[str, str]:
        """Mark, per column, rows not significantly different (alpha 0.05) from the best row."""
        best: dict[str, str] = {}
        contenders = [r for r in rows.values() if r.kind != "oracle"]
        for c in self.columns():
            top = max(contenders, key=lambda r: r.metrics[c]["score"])
            best[c] = top.name
            for row in rows.values():
                m = row.metrics[c]
                if row is top:
                    m["p_value_vs_best"], m["tied_with_best"] = None, True
                    continue
                p = self.p_value(row, top, c)
                m["p_value_vs_best"] = p
                m["tied_with_best"] = bool(p >= ALPHA)
        return best


def _wanted_methods(methods: Sequence[str] | None) -> set[str]:
    have = available_methods()
    if methods is None:
        missing = [m for m in LEARNED if m not in have]
        if missing:
            logger.info("no 'learned' recipe is registered: skipping %s", ", ".join(missing))
        return set(have)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ModelSoupError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; valid methods: {', '.join(METHODS)}"
        )
    unavailable = [m for m in methods if m not in have]
    if unavailable:
        raise RecipeError(
            f"{', '.join(unavailable)} need(s) a recipe named 'learned', which is not registered"
        )
    return {"best_individual", *methods}


def _learned_registered() -> bool:
    from modelsoup.recipes import get_recipe

    try:
        get_recipe("learned")
    except RecipeError:
        return False
    return True


def _learned_options(seed: int, learned: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options for the learned recipe: the user's, plus ``seed`` when the recipe takes one."""
    if not _learned_registered():
        return dict(learned or {})
    from modelsoup.recipes import get_recipe

    options = dict(learned or {})
    if "seed" in get_recipe("learned").Options.model_fields:
        options.setdefault("seed", seed)
    return options


def _jsonable_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Keep what a recipe recorded, minus tensors (they do not belong in results.json)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.tolist() if v.numel() <= 1000 else f"tensor{list(v.shape)}"
        else:
            out[k] = v
    return out
