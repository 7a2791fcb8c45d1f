"""The promotion gate: what a challenger did on live traffic while it was shadowed, and whether that is enough.

Pure functions over the server's prediction log lines and the feedback corrections (no Ray, no MLflow), so
`experiments/models.py promote` and the server's `/monitoring` compute the same numbers. The server writes one
line per shadowed request:

    {"event": "shadow", "request_id": "...", "time": "...",
     "champion": {"version": 3, "fake_probability": 0.8, "label": "fake"},
     "challenger": {"version": 4, "fake_probability": 0.7, "label": "fake", "latency_ms": 12.0, "error": null}}

A correction (deepfake_platform/feedback.py) names the request it corrects and the true label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SHADOW_EVENT = "shadow"


@dataclass(frozen=True)
class ShadowEvidence:
    """How challenger `version` compared with the champion on the requests it shadowed."""

    version: int
    shadowed: int  # requests the challenger answered in the shadow (errors excluded)
    failed: int  # requests where the challenger raised instead
    agreement: float | None  # share of shadowed requests where both labels agree
    mean_abs_delta: float | None  # mean |p_challenger - p_champion|
    corrections: int  # shadowed requests a user corrected
    champion_accuracy: float | None  # on those corrections
    challenger_accuracy: float | None
    champion_versions: list[int] = field(default_factory=list)  # which champion(s) it was compared with

    def lines(self) -> list[str]:
        """The evidence as a person reads it before a promotion."""

        def share(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1%}"

        delta = "n/a" if self.mean_abs_delta is None else f"{self.mean_abs_delta:.4f}"
        against = ", ".join(f"v{v}" for v in self.champion_versions) or "no champion"
        return [
            f"Shadow evidence for version {self.version} (against {against}):",
            f"  shadowed requests      {self.shadowed}" + (f" (+{self.failed} failed)" if self.failed else ""),
            f"  label agreement        {share(self.agreement)}",
            f"  mean |delta p|         {delta}",
            f"  corrected by users     {self.corrections}",
            f"  accuracy on those      champion {share(self.champion_accuracy)}, "
            f"challenger {share(self.challenger_accuracy)}",
        ]


def shadow_evidence(log_lines: Iterable[dict[str, Any]], corrections: Iterable[dict[str, Any]],
                    version: int) -> ShadowEvidence:
    """The evidence for challenger `version` from prediction log lines and feedback corrections."""
    truth = {str(c["request_id"]): c["label"] for c in corrections if c.get("request_id") and c.get("label")}
    seen: dict[str, dict[str, Any]] = {}
    failed = 0
    for line in log_lines:
        challenger = line.get("challenger") or {}
        if line.get("event") != SHADOW_EVENT or int(challenger.get("version", -1)) != int(version):
            continue
        if challenger.get("error") or challenger.get("fake_probability") is None:
            failed += 1
            continue
        seen[str(line.get("request_id"))] = line  # a retried request counts once
    pairs = [(line["champion"], line["challenger"]) for line in seen.values() if line.get("champion")]
    agreement = sum(a["label"] == b["label"] for a, b in pairs) / len(pairs) if pairs else None
    delta = (sum(abs(float(a["fake_probability"]) - float(b["fake_probability"])) for a, b in pairs) / len(pairs)
             if pairs else None)
    corrected = [(line["champion"], line["challenger"], truth[rid]) for rid, line in seen.items()
                 if rid in truth and line.get("champion")]
    return ShadowEvidence(
        version=int(version), shadowed=len(seen), failed=failed, agreement=agreement, mean_abs_delta=delta,
        corrections=len(corrected),
        champion_accuracy=sum(a["label"] == t for a, _, t in corrected) / len(corrected) if corrected else None,
        challenger_accuracy=sum(b["label"] == t for _, b, t in corrected) / len(corrected) if corrected else None,
        champion_versions=sorted({int(a["version"]) for a, _ in pairs if a.get("version") is not None}),
    )


def gate_refusal(evidence: ShadowEvidence, *, min_shadowed: int = 0, min_corrections: int = 0) -> str | None:
    """Why the evidence is not enough to promote (a sentence), or None when it passes the minimums."""
    missing = []
    if evidence.shadowed < min_shadowed:
        missing.append(f"{evidence.shadowed} shadowed request(s), {min_shadowed} required")
    if evidence.corrections < min_corrections:
        missing.append(f"{evidence.corrections} corrected shadowed request(s), {min_corrections} required")
    if not missing:
        return None
    return (f"version {evidence.version} has {' and '.join(missing)}; keep it as the challenger until the server "
            "has shadowed more traffic (or lower --min-shadowed / --min-corrections).")
