"""Findings: the one sentence a command states about its numbers, only when the numbers support it.

The perception report says where the class information sits (top vs bottom variance subspace, arXiv 2402.11337
section 3) and the alignment command whether a noise helps (docs/science.md section 4). Both go through here, so
both refuse to conclude for the same reasons and say which one:

* too few rows: fewer than :data:`MIN_ROWS` training or evaluation images;
* nothing to compare: a subspace is empty, keeps every dimension of the features (then it *is* ``all``), or
  holds a share of the variance more than :data:`VARIANCE_MARGIN` away from the share its name says (``top:0.9``
  holding 76% with one component of a concentrated spectrum, ``bottom:0.2`` holding 56%: "the top 90% / bottom
  20% of the variance" would not be what was probed);
* chance level: an accuracy counts as above chance only when the lower end of its 95% Wilson binomial interval
  lies above the chance level (the majority class's share of the evaluation rows);
* no clear difference: two accuracies whose 95% intervals overlap are "about as accurate";
* no measurable gain: a denoising benefit within :data:`BENEFIT_MARGIN` percent of 0 is no benefit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MIN_ROWS",
    "CONFIDENCE_Z",
    "BENEFIT_MARGIN",
    "VARIANCE_MARGIN",
    "Evidence",
    "SubspaceResult",
    "binomial_interval",
    "compare_subspaces",
    "subspace_finding",
    "best_subspace_finding",
    "noise_verdict",
]

MIN_ROWS = 50  # training and evaluation images a finding needs at the least
CONFIDENCE_Z = 1.959963984540054  # two-sided 95% normal quantile
BENEFIT_MARGIN = 0.1  # percent: smaller denoising benefits are round-off or noise, not a gain
VARIANCE_MARGIN = 0.1  # how far a top:p / bottom:q subspace's share of the variance may be from p / q


def binomial_interval(accuracy: float, n: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion ``accuracy`` measured on ``n`` rows (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 and 1 and for small ``n``.
    """
    if n <= 0 or not math.isfinite(accuracy):
        return (0.0, 1.0)
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Evidence:
    """What a subspace-probe finding rests on besides the accuracies.

    Attributes:
        num_train: rows the probes were fitted on.
        num_eval: rows the accuracies were measured on.
        chance: the accuracy of always answering the majority class of the evaluation rows.
    """

    num_train: int
    num_eval: int
    chance: float

    def too_few_rows(self) -> str | None:
        """Why the rows are too few for any finding, or ``None``."""
        if min(self.num_train, self.num_eval) < MIN_ROWS:
            return (
                f"only {self.num_train} training / {self.num_eval} evaluation images (a finding needs at least "
                f"{MIN_ROWS} of each)"
            )
        return None

    def above_chance(self, accuracy: float) -> bool:
        """The lower end of the accuracy's 95% binomial interval lies above chance."""
        return math.isfinite(accuracy) and binomial_interval(accuracy, self.num_eval)[0] > self.chance


@dataclass(frozen=True)
class SubspaceResult:
    """One probed subspace of one feature: its accuracy, how many of the feature's dimensions it keeps and which
    share of the variance they hold."""

    spec: str
    accuracy: float
    dims: int
    explained_variance: float
    feature_dims: int | None  # the feature's dimension D (None: unknown)


def _not_comparable(result: SubspaceResult) -> str | None:
    if not math.isfinite(result.accuracy) or result.dims <= 0:
        return f"{result.spec} is empty"
    if result.feature_dims is not None and result.dims >= result.feature_dims:
        return f"{result.spec} keeps all {result.feature_dims} dimensions (it is the whole space)"
    kind, _, share = result.spec.partition(":")
    if kind in ("top", "bottom") and abs(result.explained_variance - float(share)) > VARIANCE_MARGIN:
        return (
            f"{result.spec} holds {result.explained_variance:.0%} of the variance with {result.dims} of "
            f"{result.feature_dims or '?'} dimensions (the spectrum is too concentrated to cut at {float(share):.0%})"
        )
    return None


def compare_subspaces(top: SubspaceResult, bottom: SubspaceResult, evidence: Evidence) -> tuple[str, str]:
    """``(verdict, why)``: ``"bottom"`` / ``"top"`` (that one is more accurate), ``"tie"`` (95% intervals overlap)
    or ``"inconclusive"``, with the reason in words."""
    reason = evidence.too_few_rows() or _not_comparable(top) or _not_comparable(bottom)
    if reason:
        return "inconclusive", reason
    better, worse = (bottom, top) if bottom.accuracy > top.accuracy else (top, bottom)
    if not evidence.above_chance(better.accuracy):
        return "inconclusive", (
            f"no accuracy is above chance ({better.spec} {better.accuracy:.3f} on {evidence.num_eval} images, "
            f"chance {evidence.chance:.3f}, 95% binomial interval)"
        )
    low_better = binomial_interval(better.accuracy, evidence.num_eval)[0]
    high_worse = binomial_interval(worse.accuracy, evidence.num_eval)[1]
    if low_better <= high_worse:
        return "tie", f"{top.accuracy:.3f} vs {bottom.accuracy:.3f}: 95% binomial intervals overlap"
    return ("bottom" if better is bottom else "top"), f"{better.accuracy:.3f} vs {worse.accuracy:.3f}"


def _layers(ids: Sequence[int]) -> str:
    return f"layer {ids[0]}" if len(ids) == 1 else f"layers {', '.join(str(i) for i in ids)}"


def subspace_finding(
    verdicts: dict[int, tuple[str, str]], top_name: str, bottom_name: str, pooling: str
) -> str:
    """One sentence from per-layer :func:`compare_subspaces` verdicts (layer id -> verdict): where the class
    information sits, or why it cannot be said."""
    by_kind: dict[str, list[int]] = {}
    for layer, (verdict, _) in verdicts.items():
        by_kind.setdefault(verdict, []).append(layer)
    conclusive = [i for i, (v, _) in verdicts.items() if v != "inconclusive"]
    if not conclusive:
        last = max(verdicts) if verdicts else None
        why = verdicts[last][1] if last is not None else "no layer was probed"
        return f"No finding on {top_name} vs {bottom_name} ({pooling} pooling): {why}."
    every = len(conclusive) == len(verdicts) and len(verdicts) > 1
    where = {kind: ("at every layer probed" if every and ids == conclusive else f"at {_layers(ids)}")
             for kind, ids in by_kind.items()}  # fmt: skip
    parts = []
    if "bottom" in by_kind:
        parts.append(f"{bottom_name} carries more class information than {top_name} {where['bottom']}")
    if "top" in by_kind:
        parts.append(f"{top_name} carries more class information than {bottom_name} {where['top']}")
    if "tie" in by_kind:
        parts.append(
            f"{top_name} and {bottom_name} are about as accurate {where['tie']} (95% intervals overlap)"
        )
    sentence = "; ".join(parts)
    sentence = f"{sentence[0].upper()}{sentence[1:]} ({pooling} pooling)."
    if "inconclusive" in by_kind:
        ids = by_kind["inconclusive"]
        sentence += f" No finding at {_layers(ids)}: {verdicts[ids[-1]][1]}."
    return sentence


def best_subspace_finding(accuracy: dict[int, float], spec: str, evidence: Evidence, pooling: str) -> str:
    """One sentence on the layer whose ``spec`` probe is most accurate, when that accuracy is above chance."""
    reason = evidence.too_few_rows()
    finite = {i: a for i, a in accuracy.items() if math.isfinite(a)}
    if reason is None and not finite:
        reason = f"no {spec} subspace could be probed"
    if reason is None:
        best = max(finite, key=finite.get)
        if evidence.above_chance(finite[best]):
            low, high = binomial_interval(finite[best], evidence.num_eval)
            return (
                f"The {spec} probe is most accurate at layer {best} ({finite[best]:.3f}, 95% interval "
                f"{low:.3f}-{high:.3f}, {pooling} pooling)."
            )
        reason = f"no layer's {spec} probe is above chance ({evidence.chance:.3f}, 95% binomial interval)"
    return f"No finding on the {spec} probe ({pooling} pooling): {reason}."


def noise_verdict(never_beneficial: bool, best_benefit: float, num_samples: int) -> str:
    """The alignment command's word on one noise: ``never beneficial`` (the theory's audit: it learns PCA's
    subspaces whatever the labels), ``can help`` (it gains more than :data:`BENEFIT_MARGIN` percent of alignment at
    some K on these data), ``no gain here`` (it changes the subspaces but gains nothing measurable on these data),
    or ``too few images`` (fewer than :data:`MIN_ROWS`; the audit's ``never beneficial`` holds whatever the data)."""
    if never_beneficial:
        return "never beneficial"
    if num_samples < MIN_ROWS:
        return "too few images"
    if math.isfinite(best_benefit) and best_benefit > BENEFIT_MARGIN:
        return "can help"
    return "no gain here"
