"""``analysis.md``: each figure with one paragraph on what it shows for this run.

Every sentence is generated from the numbers in ``analysis.json`` (the correlations' signs and
sizes, which model wins, where the best point lies), so the text always matches the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelsoup.analysis.eq1 import BETA_BOUNDS
from modelsoup.analysis.stats import describe_correlation


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} points"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _figure(doc: dict[str, Any], key: str, alt: str) -> str:
    name = doc.get("figures", {}).get(key)
    return f"![{alt}]({name})\n\n" if name else ""


def _skipped(doc: dict[str, Any], key: str) -> str | None:
    reason = doc.get("skipped", {}).get(key)
    return f"*Not computed for this run: {reason}.*\n" if reason else None


def _agreement(r: float | None, expected_sign: int) -> str:
    if r is None or abs(r) < 0.1:
        return "this run neither confirms nor contradicts that"
    return (
        "and this run agrees" if (r > 0) == (expected_sign > 0) else "this run shows the opposite"
    )


def interpolation_paragraph(doc: dict[str, Any]) -> str:
    """What the interpolation curves show.

    Example:
        >>> interpolation_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    parts = []
    for c in doc.get("interpolation") or []:
        alphas, score, loss = c["alphas"], c["score"], c["loss"]
        ho = score["heldout"]
        i_best = max(range(len(ho)), key=lambda i: ho[i])
        where = (
            "strictly between the endpoints, so a mix of the two beats both on held-out data"
            if 0 < i_best < len(ho) - 1
            else f"at the {'first' if i_best == 0 else 'second'} endpoint"
        )
        text = (
            f"From {c['a']} (alpha = 0) to {c['b']} (alpha = 1) the ID score goes from "
            f"{_pct(score['id'][0])} to {_pct(score['id'][-1])}"
        )
        if "shift" in score:
            text += f" and the shift average from {_pct(score['shift'][0])} to {_pct(score['shift'][-1])}"
            j = max(range(len(alphas)), key=lambda i: score["shift"][i])
            shift_note = (
                f"; the shift average peaks at alpha = {alphas[j]:g} ({_pct(score['shift'][j])})"
            )
        else:
            shift_note = ""
        text += (
            f". The best held-out score on the path, {_pct(ho[i_best])}, is at alpha = "
            f"{alphas[i_best]:g}, {where}{shift_note}."
        )
        ends = max(loss["id"][0], loss["id"][-1])
        peak = max(loss["id"])
        if peak > ends + 1e-9:
            text += (
                f" The ID loss rises to {_num(peak)} along the path, above both endpoints "
                f"(at most {_num(ends)}): a barrier between them."
            )
        else:
            text += (
                f" The ID loss never exceeds the endpoints' ({_num(ends)}): no barrier, the "
                "straight path stays in one low-loss region."
            )
        parts.append(text)
    return " ".join(parts)


def plane_paragraph(doc: dict[str, Any]) -> str:
    """What Figure 2 shows.

    Example:
        >>> plane_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    p = doc["plane"]
    init, a, b = p["names"]
    m = p["models"]
    best = p["best"]
    n = len(p["xs"])
    w = ", ".join(f"{x:.2f}" for x in best["weights"])
    finite = [e for e in (m[a]["error"], m[b]["error"]) if e is not None]
    lower = min(finite) if finite else None
    if lower is not None and best["error"] < lower - 1e-12:
        verdict = (
            f"lower than either fine-tuned model's ({_pct(m[a]['error'])}, {_pct(m[b]['error'])})"
        )
        verdict += (
            ", and inside the triangle of the three models: as in the paper, the best point lies "
            "between the fine-tuned models"
            if best["inside"]
            else ", though outside the triangle of the three models"
        )
    else:
        verdict = (
            f"no lower than the better fine-tuned model's ({_pct(lower)}): on this grid the "
            "fine-tuned models themselves are the best points"
        )
    examples = p.get("examples", {})
    sizes = ", ".join(f"{k}: {v}" for k, v in examples.items())
    return (
        f"The plane through {init} (theta_0), {a} and {b} (the two best models on held-out data; "
        f"their deltas from the init are {p['angle']:.1f} degrees apart) was evaluated on a "
        f"{n} x {n} grid ({sizes} examples). Training loss ({p['loss_split']}) is "
        f"{_num(m[init]['loss'])} at the init, {_num(m[a]['loss'])} at {a} and "
        f"{_num(m[b]['loss'])} at {b}. The lowest test error ({p['error_split']}) on the grid is "
        f"{_pct(best['error'])}, at weights ({w}) on ({init}, {a}, {b}), {verdict}."
        + (
            f" {p['nonfinite']} grid values are blank: the mixed model's outputs are not finite "
            "there (far outside the triangle, e.g. a BatchNorm variance mixed with negative "
            "weights)."
            if p.get("nonfinite")
            else ""
        )
        + (" The grid is coarse, so this is a rough picture." if n < 6 else "")
    )


def angle_paragraph(doc: dict[str, Any]) -> str:
    """What Figure 3 shows.

    Example:
        >>> angle_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    pairs = doc["pairs"]["pairs"]
    angles = [p["angle"] for p in pairs]
    adv = [p["advantage"]["id"] for p in pairs]
    r = doc["pairs"]["correlation"].get("angle_vs_advantage_id")
    positive = sum(x > 0 for x in adv)
    text = (
        f"Over {len(pairs)} pairs, the angle between the two models' deltas from the init ranges "
        f"from {min(angles):.1f} to {max(angles):.1f} degrees (mean {_mean(angles):.1f}). The "
        f"interpolation advantage on the ID split (midpoint soup minus the endpoints' mean) ranges "
        f"from {_pts(min(adv))} to {_pts(max(adv))} (mean {_pts(_mean(adv))}) and is positive for "
        f"{positive} of {len(pairs)} pairs. Angle and advantage show "
        f"{describe_correlation(r, len(pairs))}. The paper finds that larger angles give larger "
        f"advantages; {_agreement(r, +1)}."
    )
    r_shift = doc["pairs"]["correlation"].get("angle_vs_advantage_shift")
    if "angle_vs_advantage_shift" in doc["pairs"]["correlation"]:
        sadv = [p["advantage"]["shift"] for p in pairs]
        text += (
            f" Under shift the mean advantage is {_pts(_mean(sadv))}, with "
            f"{describe_correlation(r_shift, len(pairs))} to the angle."
        )
    if len(pairs) < 6:
        text += " With this few pairs the correlation is anecdotal."
    return text


def soup_vs_ensemble_paragraph(doc: dict[str, Any]) -> str:
    """What Figure 4 shows.

    Example:
        >>> soup_vs_ensemble_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    pairs = doc["pairs"]["pairs"]
    n = len(pairs)
    corr = doc["pairs"]["correlation"]
    diff = doc["pairs"]["soup_minus_ensemble"]
    names = {"id": "In distribution", "shift": "Under shift (mean over the shift splits)"}
    sentences = []
    for g in ("id", "shift"):
        if g not in diff:
            continue
        d = diff[g]
        sentences.append(
            f"{names[g]}, the two-model soup beats the two-model ensemble in {d['soup_better']} of "
            f"{n} pairs and loses in {d['ensemble_better']} (mean soup minus ensemble "
            f"{_pts(d['mean'])}; {describe_correlation(corr.get(f'soup_vs_ensemble_{g}'), n)})."
        )
    verdict = []
    if "id" in diff:
        verdict.append(
            "ensembles are slightly better in distribution here, as in the paper"
            if diff["id"]["mean"] < 0
            else "in distribution the soups are not behind the ensembles here, unlike the paper"
        )
    if "shift" in diff:
        verdict.append(
            "soups are better under shift, as in the paper"
            if diff["shift"]["mean"] > 0
            else "under shift the soups do not beat the ensembles here, unlike the paper"
        )
    return " ".join(sentences) + (" In short: " + "; ".join(verdict) + "." if verdict else "")


def eq1_paragraph(doc: dict[str, Any]) -> str:
    """What the Eq. 1 scatter shows.

    Example:
        >>> eq1_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    e = doc["eq1"]
    pts = e["points"]
    n = len(pts)
    betas = list(e["beta"].values())
    measured = [p["measured"] for p in pts]
    curv = [p["alpha"] * (1 - p["alpha"]) / 2 * -p["curvature"] for p in pts]
    var = [p["alpha"] * (1 - p["alpha"]) / 2 * p["beta"] ** 2 * p["variance"] for p in pts]
    alphas = sorted({p["alpha"] for p in pts})
    where = (
        f"alpha = {alphas[0]:g}"
        if len(alphas) == 1
        else f"alpha in {', '.join(f'{a:g}' for a in alphas)}"
    )
    text = (
        f"For {n} (pair, alpha) points ({where}) on "
        f"the {e['split']} split, with beta fitted per pair on held-out data "
        f"({min(betas):.3g} to {max(betas):.3g}), the Eq. 1 approximation and the measured "
        f"L_soup - L_ens show {describe_correlation(e['correlation'], n)}, and agree in sign for "
        f"{100 * e['sign_agreement']:.0f}% of the points. The measured difference averages "
        f"{_num(_mean(measured))} nats ({'the soup has the lower loss' if _mean(measured) < 0 else 'the ensemble has the lower loss'} "
        f"on average); the curvature term contributes {_num(_mean(curv))} and the "
        f"confidence (variance) term {_num(_mean(var))} on average."
    )
    at_bound = sum(b <= BETA_BOUNDS[0] * 1.000001 or b >= BETA_BOUNDS[1] * 0.999999 for b in betas)
    if at_bound:
        text += (
            f" For {at_bound} pair(s) beta stopped at the end of its search range "
            f"[{BETA_BOUNDS[0]:g}, {BETA_BOUNDS[1]:g}]: no temperature calibrates those models "
            "(near-chance or perfectly separated predictions), so their points say little."
        )
    if e["step"] >= 0.5:
        text += (
            " The second derivative comes from the endpoints and the midpoint only (step "
            f"{e['step']:g}), a coarse estimate."
        )
    return text


def calibration_paragraph(doc: dict[str, Any]) -> str:
    """What the calibration figure shows.

    Example:
        >>> calibration_paragraph(json.loads(Path("analysis.json").read_text()))  # doctest: +SKIP
    """
    c = doc["calibration"]
    split = doc["task"]["id_test"]
    methods = sorted(c["methods"], key=lambda m: m["ece"][split])
    listing = ", ".join(f"{m['title']} {_pct(m['ece'][split])}" for m in methods)
    by = {m["name"]: m for m in c["methods"]}
    text = f"ECE on the {split} split, lowest first: {listing}."
    ref = by.get("best_individual")
    ens = by.get("ensemble")
    soups = [m for m in c["methods"] if m["kind"] == "soup"]
    if ref and ens:
        d = ens["ece"][split] - ref["ece"][split]
        text += (
            f" The ensemble's ECE is {abs(100 * d):.1f} points "
            f"{'lower' if d < 0 else 'higher'} than the best individual model's"
        )
        text += (
            "."
            if not soups
            else (
                "; the soups' differ from it by "
                + ", ".join(
                    f"{100 * (m['ece'][split] - ref['ece'][split]):+.1f} ({m['title']})"
                    for m in soups
                )
                + " points."
            )
        )
        if soups:
            worse = sum(m["ece"][split] > ens["ece"][split] for m in soups)
            text += (
                f" {worse} of {len(soups)} soups are less well calibrated than the ensemble; the "
                "paper reports that soups do not improve calibration the way ensembles do"
                + (
                    ", and this run agrees."
                    if worse == len(soups) and d < 0
                    else (
                        ", which this run only partly shows."
                        if worse
                        else "; in this run they match or beat it."
                    )
                )
            )
    if "shift_avg" in (methods[0]["ece"] if methods else {}):
        best_shift = min(c["methods"], key=lambda m: m["ece"]["shift_avg"])
        text += f" Under shift the best-calibrated method is {best_shift['title']} ({_pct(best_shift['ece']['shift_avg'])})."
    if c["from"] != "results.json":
        text += (
            " (No results.json in the run directory: only the best individual model, the "
            "uniform soup and the ensemble are shown; run `modelsoup compare` for every method.)"
        )
    return text


SECTIONS = (
    ("interpolation", "interpolation", "Interpolation curves", interpolation_paragraph),
    ("plane", "plane", "Figure 2: the loss and error landscape", plane_paragraph),
    ("pairs", "angle", "Figure 3: angle vs interpolation advantage", angle_paragraph),
    (
        "pairs",
        "soup_vs_ensemble",
        "Figure 4: two-model soups vs ensembles",
        soup_vs_ensemble_paragraph,
    ),
    ("eq1", "eq1", "Eq. 1: soup minus ensemble loss", eq1_paragraph),
    ("calibration", "calibration", "Calibration", calibration_paragraph),
)


def render_markdown(doc: dict[str, Any]) -> str:
    """The analysis report, from the analysis.json document.

    Example:
        >>> md = render_markdown(json.loads(Path("run/analysis/analysis.json").read_text()))  # doctest: +SKIP
    """
    models = doc["models"]
    cost = doc.get("cost", {})
    lines = [
        f"# Analyses of {doc['run_dir']}",
        "",
        f"Task `{doc['task']['name']}`; {len(models['fine_tuned'])} fine-tuned models from the "
        f"init `{models['init']}`; best on held-out: `{models['best']}` "
        f"({_pct(models['heldout_score'][models['best']])}), second: `{models['second']}` "
        f"({_pct(models['heldout_score'][models['second']])})."
        + (" This is the light version (`--light`): few pairs, a coarse plane." if doc.get("light") else "")
        + (f" {cost.get('forward_examples', 0)} examples were run through a model, "
           f"{cost.get('cached_examples', 0)} came from the cache; {cost.get('seconds', 0):.0f} s."
           if cost else ""),
        "",
    ]  # fmt: skip
    for note in doc.get("notes") or []:
        lines += [f"> Note: {note}.", ""]
    for data_key, fig_key, title, paragraph in SECTIONS:
        lines += [f"## {title}", ""]
        skipped = _skipped(doc, data_key)
        if skipped or doc.get(data_key) is None:
            lines += [skipped or "*Not computed.*", ""]
            continue
        lines.append(_figure(doc, fig_key, title).rstrip("\n"))
        lines += ["", paragraph(doc), ""]
    return "\n".join(lines).rstrip() + "\n"
