"""Greedy soup, the paper's Recipe 1: add ingredients in order of held-out score while they help.

Sort ingredients by held-out score, descending (ties keep the input order). The first is always
taken. Each next candidate soup is ``(sum + theta_i) / (n + 1)`` from a running float32 sum of
the accepted ingredients, so a step costs one model's worth of work. The candidate is accepted
when its held-out score is ``>=`` (paper) or ``>`` (official code) the current soup's.

With accuracy as the held-out metric, *exact early rejection* stops scoring a candidate as soon
as it cannot reach the threshold even if every remaining example were correct: the selection is
identical to full evaluation, and ``info["examples_saved"]`` says how much work it spared.

With a journal (``modelsoup cook`` keeps one, see :mod:`modelsoup.journal`) the trajectory is
saved after every candidate; a rerun after a crash rebuilds the running sum from the accepted
members, in the same order (so bitwise the same), and goes on with the next candidate.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from modelsoup.engine import Mixture
from modelsoup.errors import RecipeError
from modelsoup.ingredients import Ingredient
from modelsoup.ingredients.dtypes import to_torch
from modelsoup.journal import kill_point
from modelsoup.recipes.base import Decision, Recipe, RecipeContext, RecipeOptions, register

CANDIDATE_KEY = "greedy-running-sum"


class GreedyOptions(RecipeOptions):
    rule: Literal[">=", ">"] = Field(
        ">=",
        description="Accept a candidate whose held-out score is >= (the paper) or > (the "
        "official code) the current soup's.",
    )
    order: Literal["sorted", "random"] = Field(
        "sorted",
        description="Try ingredients by held-out score (sorted) or in a random order.",
    )
    seed: int = Field(0, description="Seed of the random order.")
    early_rejection: bool = Field(
        True,
        description="Stop scoring a candidate once it cannot reach the threshold (exact; "
        "accuracy only).",
    )


class RunningSum:
    """A float32 (float64 for float64 tensors) running sum of accepted ingredients; candidates cost one model's worth of work.

    Integer and bool tensors follow the engine's policy for a uniform subset: they come from the
    member with the lowest input index, so a candidate equals ``mix(subset)`` up to float
    rounding.

    Example:
        >>> rs = RunningSum(ingredients)  # doctest: +SKIP
        >>> rs.add(3); sd = rs.candidate(5)  # (theta_3 + theta_5) / 2  # doctest: +SKIP
    """

    def __init__(self, ingredients: Sequence[Ingredient]) -> None:
        self.ingredients = list(ingredients)
        self.infos = self.ingredients[0].tensor_infos
        self.members: list[int] = []
        self.sum: dict[str, torch.Tensor] = {}

    def add(self, i: int) -> None:
        """Add ingredient ``i`` to the sum."""
        ing = self.ingredients[i]
        for name, info in self.infos.items():
            if not info.is_float:
                continue
            t = ing.get(name)
            if name in self.sum:
                self.sum[name].add_(t)
            else:
                acc = torch.float64 if info.dtype == "F64" else torch.float32  # as the engine
                self.sum[name] = t.to(acc, copy=True)
        self.members.append(i)

    def candidate(self, i: int) -> dict[str, torch.Tensor]:
        """The state dict of ``average(members + [i])``."""
        ing = self.ingredients[i]
        size = len(self.members) + 1
        first = self.ingredients[min([*self.members, i])]
        out = {}
        for name, info in self.infos.items():
            if info.is_float:
                mean = (self.sum[name] + ing.get(name)).div_(size)
                out[name] = mean.to(to_torch(info.dtype))
            else:
                out[name] = first.get(name)
        return out

    def key(self, i: int) -> str:
        """Cache identity of ``candidate(i)``: the accumulation order of its members' digests."""
        digests = [self.ingredients[j].digest for j in [*self.members, i]]
        return f"{CANDIDATE_KEY}:" + hashlib.sha256("|".join(digests).encode()).hexdigest()


@register
class GreedySoup(Recipe):
    """Recipe 1 of Wortsman et al. (2022), with exact early rejection."""

    name = "greedy"
    title = "Greedy soup"
    summary = "add ingredients by held-out accuracy while the soup's held-out score does not drop"
    needs_task = True
    min_ingredients = 1
    Options = GreedyOptions

    def decide(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> Decision:
        ev = context.evaluator
        if ev is None:
            raise RecipeError("recipe 'greedy' chooses on held-out data: give it a task")
        opts = self.options
        split = ev.task.heldout
        metric = ev.task.metric_for(split)
        exact = metric == "accuracy"
        n = len(ev.task.split(split))
        k = len(ingredients)
        names = [ing.name for ing in ingredients]

        journal = context.journal
        resumed = journal.load() if journal is not None else None
        early = opts.early_rejection and exact
        if opts.early_rejection and not exact:
            context.log(f"greedy: early rejection needs accuracy, not {metric}; scoring fully")
        running = RunningSum(ingredients)
        if resumed is not None:
            individual, order = resumed["individual"], resumed["order"]
            trajectory: list[dict[str, Any]] = resumed["trajectory"]
            score, hits = resumed["score"], resumed["hits"]
            for i in resumed["members"]:  # the order of acceptance: bitwise the same sum
                running.add(i)
            context.log(
                f"greedy: resuming from the journal after {len(trajectory)} of {k} ingredients "
                f"({len(running.members)} accepted, {100 * score:.2f}%)"
            )
        else:
            individual = []
            for ing in ingredients:
                m = ev.metrics(ev.logits(ing, split), split)
                individual.append(m)
                context.log(f"greedy: {ing.name}: held-out {metric} {100 * m['score']:.2f}%")
            if opts.order == "sorted":
                rank = [m["correct"] if exact else m["score"] for m in individual]
                order = sorted(range(k), key=lambda i: -rank[i])
            else:
                order = list(range(k))
                random.Random(opts.seed).shuffle(order)
            first = order[0]
            running.add(first)
            score, hits = individual[first]["score"], individual[first]["correct"]
            trajectory = [_step(names[first], first, score, True, 0, 1, from_individual=True)]
            context.log(f"greedy: start with {names[first]} ({100 * score:.2f}%)")

        def save() -> None:
            if journal is not None:
                state = {"individual": individual, "order": order, "trajectory": trajectory}
                journal.save({**state, "members": running.members, "score": score, "hits": hits})
            kill_point("greedy-step")

        if resumed is None:
            save()
        for i in order[len(trajectory) :]:
            source = (running.key(i), lambda i=i: running.candidate(i))
            if early:
                need = hits + (1 if opts.rule == ">" else 0)
                accepted, c_hits, evaluated = ev.count_correct(source, split, need=need)
                c_score = c_hits / n if evaluated == n else None
            else:
                m = ev.metrics(ev.logits(source, split), split)
                c_hits, c_score, evaluated = m["correct"], m["score"], n
                mine, theirs = (c_hits, hits) if exact else (c_score, score)
                accepted = mine >= theirs if opts.rule == ">=" else mine > theirs
            if accepted:
                running.add(i)
                score, hits = (c_score if c_score is not None else c_hits / n), c_hits
            trajectory.append(
                _step(names[i], i, c_score, accepted, evaluated, len(running.members))
            )
            shown = "stopped early" if c_score is None else f"{100 * c_score:.2f}%"
            context.log(
                f"greedy: + {names[i]}: {shown} ({evaluated}/{n} examples) -> "
                f"{'accepted' if accepted else 'rejected'}"
            )
            save()

        chosen = sorted(running.members)
        evaluated_total = sum(step["evaluated_examples"] for step in trajectory)
        full = (k - 1) * n
        info = {
            "split": split,
            "metric": metric,
            "rule": opts.rule,
            "early_rejection": early,
            "heldout_scores": {names[i]: individual[i]["score"] for i in range(k)},
            "heldout_score": score,
            "order": [names[i] for i in order],
            "order_indices": order,
            "chosen": [names[i] for i in running.members],
            "chosen_indices": chosen,
            "trajectory": trajectory,
            "examples_evaluated": evaluated_total,
            "examples_full": full,
            "examples_saved": full - evaluated_total,
        }
        context.log(
            f"greedy: {len(chosen)} of {k} ingredients, held-out {100 * score:.2f}%; "
            f"{evaluated_total}/{full} candidate example evaluations"
        )
        return Decision(Mixture.subset(k, chosen), info)


def _step(
    name: str,
    index: int,
    score: float | None,
    accepted: bool,
    evaluated: int,
    size: int,
    from_individual: bool = False,
) -> dict[str, Any]:
    step = {
        "candidate": name,
        "index": index,
        "heldout_score": score,
        "accepted": accepted,
        "evaluated_examples": evaluated,
        "soup_size": size,
    }
    if from_individual:
        step["note"] = "first in order: always taken (score from its individual evaluation)"
    return step
