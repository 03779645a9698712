"""The paired review as Markdown: one verdict line per model, then the tables behind the verdicts.

The verdict lines come first so that a page cut to fit one comment keeps them; the per-class table
(14 rows per model) comes last and is the first thing cut. The same lines, uncut, are the page
``paired-review.md`` beside report.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cxr_core.devtools.paired_review import Change, ModelReview, Review, ReviewSettings
from cxr_core.devtools.pr_git import Revision

TITLE = "Paired review: base vs head on the same test images"


def _value(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "-"


def _signed(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "-"


def _p(p: float) -> str:
    return f"{p:.3g}" if math.isfinite(p) else "-"


def _interval(ci: tuple[float, float]) -> str:
    return f"{_signed(ci[0])} to {_signed(ci[1])}"


def _level(settings: ReviewSettings) -> str:
    return f"{100 * settings.ci:g}%"


def _stated(c: Change, level: str) -> str:
    """``+0.0123 (95% CI +0.0051 to +0.0190, Holm p 0.004)`` and, within noise, the test not passed."""
    why = f"; {c.why}" if c.why else ""
    return f"{_signed(c.diff)} ({level} CI {_interval(c.ci)}, Holm p {_p(c.p_holm)}{why})"


def verdict_line(m: ModelReview, level: str) -> str:
    """One line per model: the macro AUC verdict with its interval, then the localisation one."""
    if m.auc is None:
        return f"- `{m.model}`: not paired: {m.unpaired}"
    line = f"- `{m.model}`: **{m.auc.verdict}** in macro AUC, {_stated(m.auc, level)}"
    if m.loc is not None:
        line += f"; {m.loc.metric}: **{m.loc.verdict}**, {_stated(m.loc, level)}"
    elif m.loc_note:
        line += f"; {m.loc_note}"
    return line + "."


def _method(review: Review, head: Revision) -> str:
    """How the numbers were made: the resampling, the settings (and where from), the rule."""
    s = review.settings
    assert s is not None
    n = len(review.paired)
    spread = any(c is not None and c.spread for m in review.paired for c in (m.auc, m.loc))
    seeds = (
        f"; with two or more common seeds also beyond {s.z:.2f} SE of the seed-to-seed spread"
        if spread
        else ""
    )
    return (
        f"Change = head - base, both sides scored on each of the same {s.n_boot:,} patient-bootstrap "
        f"replicates (`test.bootstrap`), {_level(s)} percentile intervals (`test.ci`), draw seed {s.seed} "
        f"(`seed`): the compare stage's resampling, with the head's params ({head.label}). Several seeds: "
        f"each replicate scores the mean over the seeds. p: two-sided bootstrap p; Holm over the {n} "
        f"paired model{'s' * (n != 1)}, per metric. **better** / **worse** need Holm p < {s.alpha:g} "
        f"(`compare.alpha`) and a change beyond {s.min_auc_difference:g} macro AUC "
        f"(`compare.min_auc_difference`) or {s.min_rate_difference:g} in the pointing rate "
        f"(`compare.min_rate_difference`), the spread between training runs that a paired test does "
        f"not see{seeds}; otherwise **within noise**. DeLong (image-level, first common seed, Holm over "
        f"the findings) is a cross-check beside the macro AUC, not part of the verdict.{_too_few(s, n)}"
    )


def _too_few(s: ReviewSettings, n_models: int) -> str:
    """A warning when no change can be significant: the smallest bootstrap p is 2 / (B + 1)."""
    smallest = min(1.0, n_models * 2.0 / (s.n_boot + 1))
    if smallest < s.alpha:
        return ""
    return (
        f" **No verdict can be better or worse here:** with {s.n_boot:,} replicates the smallest Holm p "
        f"over {n_models} models is {smallest:.3g}, not below {s.alpha:g}; raise `test.bootstrap`."
    )


def _row(model: str, seeds: str, c: Change, delong: str = "-", holm: bool = True) -> str:
    cells = [f"`{model}`", seeds, c.metric, _value(c.base), _value(c.head), _signed(c.diff), _interval(c.ci)]
    cells += [_p(c.p), _p(c.p_holm) if holm else "-", delong, c.verdict if holm else "-"]
    return "| " + " | ".join(cells) + " |"


def _delong_count(m: ModelReview, alpha: float) -> str:
    """``2 of 14``: findings whose DeLong test (Holm over the findings) is below alpha."""
    tested = [r.delong_p_holm for r in m.classes if math.isfinite(r.delong_p_holm)]
    return f"{sum(p < alpha for p in tested)} of {len(tested)}"


def change_table(models: Sequence[ModelReview], settings: ReviewSettings) -> list[str]:
    """Headline metrics per model (pooled over seeds), then each seed alone (p unadjusted, no verdict)."""
    out = [
        f"| model | seeds | metric | base | head | change | {_level(settings)} CI | p | Holm p "
        f"| DeLong: findings at p < {settings.alpha:g} | verdict |",
        "|---|---|---|--:|--:|--:|---|--:|--:|--:|---|",
    ]
    for m in models:
        seeds = ", ".join(str(k) for k in m.seeds)
        if m.auc is not None:
            out.append(_row(m.model, seeds, m.auc, _delong_count(m, settings.alpha)))
        if m.loc is not None:
            out.append(_row(m.model, seeds, m.loc))
        out += [_row(m.model, f"{seed} alone", c, holm=False) for seed, c in m.per_seed]
    return [*out, ""]


def spread_table(models: Sequence[ModelReview], z: float) -> list[str]:
    """Where two or more seeds are common: the change against the spread between training runs."""
    rows = []
    for m in models:
        for c in (m.auc, m.loc):
            if c is not None and c.spread is not None:
                sp = c.spread
                ratio = abs(c.diff) / sp.se if sp.se > 0 else math.inf
                cells = [f"`{m.model}`", c.metric, str(sp.n_seeds), _value(sp.base_sd), _value(sp.head_sd)]
                cells += [_value(sp.se), _signed(c.diff), f"{ratio:.2f}" if math.isfinite(ratio) else "inf"]
                rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        f"Seed-to-seed spread (SD over the common seeds, ddof 1; SE of the change = sqrt((SD base^2 + SD "
        f"head^2) / seeds)); a verdict needs |change| / SE above {z:.2f}:",
        "",
        "| model | metric | seeds | SD base | SD head | SE | change | abs(change) / SE |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
    ]


def class_table(models: Sequence[ModelReview], level: str) -> list[str]:
    """Every finding's AUC change per model, the bootstrap's Holm over the models and DeLong's."""
    rows = [
        "| model | finding | base | head | change | " + f"{level} CI | p | Holm p (models) | DeLong Holm p |",
        "|---|---|--:|--:|--:|---|--:|--:|--:|",
    ]
    for m in models:
        for r in m.classes:
            cells = [
                f"`{m.model}`",
                r.label,
                _value(r.base),
                _value(r.head),
                _signed(r.diff),
                _interval(r.ci),
            ]
            rows.append("| " + " | ".join([*cells, _p(r.p), _p(r.p_holm), _p(r.delong_p_holm)]) + " |")
    return [
        "### AUC change per finding",
        "",
        "Pooled over the common seeds as above; Holm over the models per finding. DeLong: image-level "
        "(it ignores that a patient has several images, so it is optimistic), first common seed, Holm "
        "over the findings within the model; a cross-check, not the test.",
        "",
        *rows,
        "",
    ]


def review_lines(review: Review, head: Revision) -> list[str]:
    """The report's section: verdict lines, how they were reached, the tables."""
    out = [f"## {TITLE}", ""]
    if review.settings is None or review.unavailable:
        out += [
            f"No paired comparison: {review.unavailable}. The headline table above is unpaired: each "
            "side's own numbers, with the head's interval, not an interval for the change.",
            "",
        ]
        return [*out, *(f"- {note}" for note in review.notes), ""] if review.notes else out
    level = _level(review.settings)
    out += [verdict_line(m, level) for m in review.models]
    out += ["", *(f"- {note}" for note in review.notes), ""] if review.notes else [""]
    paired = review.paired
    out += [
        _method(review, head),
        "",
        *change_table(paired, review.settings),
        *spread_table(paired, review.settings.z),
    ]
    return out + class_table(paired, level)


def review_page(review: Review, base: Revision, head: Revision, marker: str) -> str:
    """``paired-review.md``: the whole section, never cut, as its own page."""
    lines = review_lines(review, head)
    title = f"# {TITLE}: {base.label} -> {head.label}"
    return "\n".join([marker, title, "", *lines[2:]]).rstrip("\n") + "\n"
