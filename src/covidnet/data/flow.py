"""The cohort flow diagram in the form of the paper's Fig. 1, as JSON and Markdown."""

from __future__ import annotations

from covidnet.data.cohort import LABELS

_NAMES = {"covid": "COVID-19", "non_covid": "other pneumonia"}


def _pair(counts: dict) -> str:
    return "; ".join(f"{_NAMES[l]}: {counts[l]['patients']} patients / {counts[l]['scans']} scans" for l in LABELS)


def render_flow(flow: dict, synthetic: bool) -> str:
    """A readable flow diagram: recruited -> excluded by reason -> included -> splits.

    Args:
        flow: ``{"recruited", "excluded", "included", "split"}`` counts as written by the
            exclude and split stages.
        synthetic: whether the cohort is synthetic (said in the heading).
    """
    lines = ["# Cohort flow (Fig. 1 form)", ""]
    if synthetic:
        lines += ["**Synthetic cohort**: every number below counts synthetic patients, not real ones.", ""]
    lines += ["```", f"Recruited          {_pair(flow['recruited'])}", "   |"]
    for rule, c in flow["excluded"].items():
        lines.append(f"   +-- excluded: {c['description']} [{rule}]")
        lines.append(f"   |       {_pair(c)}")
    if flow.get("studies_not_in_manifest"):
        lines.append(f"   +-- ignored: {flow['studies_not_in_manifest']} DICOM studies not in the manifest")
    lines += ["   v", f"Included           {_pair(flow['included'])}"]
    if "split" in flow:
        lines.append("   |")
        for name, c in flow["split"].items():
            lines.append(f"   +-- {name:<9} {_pair(c)}")
    lines += ["```", "", "Scans excluded by a patient-level rule are counted under that rule; the patient counts",
              "of scan-level rules are patients affected (they may keep other scans)."]
    return "\n".join(lines) + "\n"


def flow_metrics(flow: dict) -> dict:
    """The flow counts without their prose, for ``dvc metrics`` (numbers and flags only)."""
    if isinstance(flow, dict):
        return {k: flow_metrics(v) for k, v in flow.items() if k != "description"}
    return flow
