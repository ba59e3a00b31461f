"""Plots and the Markdown/HTML report of the evaluate stage (the paper's Tables 1, 2, Figs. 2, 4).

The report is built once as a list of blocks (heading, paragraph, table, image) and rendered
both as Markdown (images referenced beside it) and as self-contained HTML (images embedded
as base64). Plots use matplotlib's object API (no pyplot, no global backend state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covidnet.pages import Block, provenance_blocks, to_html, to_markdown

_CLASS_NAMES = {"covid": "COVID-19", "non_covid": "Non-COVID-19"}
_FIG_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "f1": "F1"}


class _Notes:
    """Collects the reasons of undefined figures, shown under the tables as numbered notes."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def cell(self, fig: dict[str, Any] | None, what: str) -> str:
        if fig is None:
            return ""
        if fig.get("value") is None:
            self.items.append(f"{what}: {fig.get('reason', 'undefined')}")
            return f"n/a [{len(self.items)}]"
        text = f"{100 * fig['value']:.1f}"
        if fig.get("ci"):
            lo, hi = fig["ci"]
            text += f" ({100 * lo:.1f}–{100 * hi:.1f})"
        return text


def _kappa_cell(fig: dict[str, Any], notes: _Notes, what: str) -> str:
    if fig.get("value") is None:
        notes.items.append(f"{what}: {fig.get('reason', 'undefined')}")
        return f"n/a [{len(notes.items)}]"
    ci = f" ({fig['ci'][0]:.2f} to {fig['ci'][1]:.2f})" if fig.get("ci") else ""
    return f"{fig['value']:.2f}{ci}"


def _summary_cell(summary: dict[str, Any]) -> str:
    if summary["median"] is None:
        return "n/a"
    return f"{summary['median']:.2f} ({summary['iqr'][0]:.2f}–{summary['iqr'][1]:.2f}), n = {summary['n']}"


def saliency_blocks(s: dict[str, Any], image: str | None) -> list[Block]:
    """The explanations' section: how much of the maps falls in the planted lesions, against chance."""
    method = s["method"] + (f" on {s['layer']}" if s.get("layer") else "")
    blocks: list[Block] = [("h2", "Explanations (saliency maps)")]
    if "enrichment" not in s:
        return blocks + [("p", f"Method: {method}. {s.get('reason', '')}")]

    def pct(fig: dict[str, Any]) -> str:
        ci = f" ({100 * fig['ci'][0]:.1f}-{100 * fig['ci'][1]:.1f})" if fig.get("ci") else ""
        return f"{100 * fig['value']:.1f}%{ci}"

    def times(fig: dict[str, Any]) -> str:
        ci = f" (95% CI {fig['ci'][0]:.2f}-{fig['ci'][1]:.2f})" if fig.get("ci") else ""
        return f"{fig['value']:.2f}x chance{ci}"

    if s.get("baseline_hu") is not None:
        method += f", reference {s['baseline_hu']:g} HU"
    rim = f" (lung voxels within {s['rim']} of the lung's edge left out of both)" if s.get("rim") else ""
    blocks.append(("p", f"Method: {method}. On {s['n_checked']} true positives, {pct(s['share'])} of the maps' mass "
                        f"in the lungs falls in the planted lesions, against {pct(s['chance'])} for a map spread "
                        f"evenly over the lungs{rim}: **{times(s['enrichment'])}**."))
    anchors = s.get("anchors") or {}
    if "enrichment" in anchors.get("density", {}) and "enrichment" in anchors.get("gradient", {}):
        blocks.append(("p", f"Read against two anchors on the same studies: the density alone (the volume minus "
                            f"aerated lung, no model) gets {times(anchors['density']['enrichment'])}; the model's "
                            f"gradient alone gets {times(anchors['gradient']['enrichment'])}. A map no better than "
                            "the density shows where the lesions are more than what the model used."))
    if image:
        blocks.append(("img", image))
    return blocks


def build_blocks(metrics: dict[str, Any], images: list[str], tsne_note: str = "") -> list[Block]:
    """The report's content; ``images`` are the PNG file names written beside it."""
    m, notes = metrics, _Notes()
    level = round(100 * m["bootstrap"]["ci_level"])
    blocks: list[Block] = [("h1", f"Evaluation: {m['title']} set")]
    if m["synthetic"]:
        blocks.append(("p", "**Synthetic data**: every figure below is measured on synthetic patients and says "
                            "nothing about performance on real CT scans."))
    else:
        blocks.append(("p", "Data: real patients (not synthetic)."))
    blocks.append(("p", f"{m['n']} patients, {m['n_positive']} COVID-19 (label 1) and {m['n'] - m['n_positive']} "
                        f"other pneumonia (label 0). A score >= {m['threshold']:g} calls COVID-19. Percent, with "
                        f"{level}% CIs from a percentile bootstrap over patients "
                        f"({m['bootstrap']['replications']} replications, seed {m['bootstrap']['seed']})."))
    header = ["Class", *(_FIG_NAMES[f] for f in ("sensitivity", "specificity")), "Accuracy",
              *(_FIG_NAMES[f] for f in ("ppv", "npv", "f1")), "AUC"]
    rows = []
    for cls, name in _CLASS_NAMES.items():
        c = m[cls]
        rows.append([name, notes.cell(c["sensitivity"], f"{name} sensitivity"),
                     notes.cell(c["specificity"], f"{name} specificity"), notes.cell(m["accuracy"], "accuracy"),
                     notes.cell(c["ppv"], f"{name} PPV"), notes.cell(c["npv"], f"{name} NPV"),
                     notes.cell(c["f1"], f"{name} F1"), notes.cell(m["auc"], "AUC")])
    blocks += [("h2", "Performance (Table 1 form)"), ("table", (header, rows))]
    c = m["confusion"]
    blocks += [("h2", "Confusion matrix"),
               ("table", (["", "Called COVID-19", "Called non-COVID-19"],
                          [["COVID-19", str(c["tp"]), str(c["fn"])], ["Non-COVID-19", str(c["fp"]), str(c["tn"])]]))]
    if m["readers"]:
        header = ["Rater", "Group", *(_FIG_NAMES[f] for f in ("sensitivity", "specificity")), "Accuracy",
                  *(_FIG_NAMES[f] for f in ("ppv", "npv", "f1"))]
        rows = []
        for rater, block, group in [("Model", m, ""), *((r, b, b["group"]) for r, b in m["readers"].items())]:
            cov = block["covid"]
            rows.append([rater, group, *(notes.cell(cov[f], f"{rater} {f}") for f in ("sensitivity", "specificity")),
                         notes.cell(block["accuracy"], f"{rater} accuracy"),
                         *(notes.cell(cov[f], f"{rater} {f}") for f in ("ppv", "npv", "f1"))])
        blocks += [("h2", "Model and readers, COVID-19 as positive (Table 2 form)"), ("table", (header, rows))]
        k = m["kappa"]
        rows = [[f"model vs {r}", _kappa_cell(f, notes, f"kappa model vs {r}")] for r, f in k["model_vs_reader"].items()]
        rows += [[pair, _kappa_cell(f, notes, f"kappa {pair}")] for pair, f in k["reader_vs_reader"].items()]
        blocks += [("h2", "Cohen's kappa (Supplementary Table 9 form)"), ("table", (["Pair", "kappa (CI)"], rows))]
        rows = [[g, ", ".join(v["readers"]), _summary_cell(v["model_vs_reader"]), _summary_cell(v["reader_vs_reader"])]
                for g, v in k["groups"].items()]
        blocks.append(("table", (["Group", "Readers", "Model vs reader: median (IQR)",
                                  "Reader vs reader: median (IQR)"], rows)))
    if m["per_hospital"]:
        rows = []
        for h, v in m["per_hospital"].items():
            hc = v["confusion"]
            rows.append([h, str(v["n"]), str(hc["tp"]), str(hc["fn"]), str(hc["tn"]), str(hc["fp"]),
                         notes.cell(v["sensitivity"], f"{h} sensitivity"),
                         notes.cell(v["specificity"], f"{h} specificity")])
        blocks += [("h2", "Per hospital (Fig. 4 form)"),
                   ("table", (["Hospital", "n", "TP", "FN", "TN", "FP", "Sensitivity", "Specificity"], rows))]
    cal = m["calibration"]
    text = (f"Expected calibration error {cal['ece']:.3f} ({cal['bins']} equal-width bins), Brier score "
            f"{cal['brier']:.3f} on the raw scores (the paper notes its scores were not calibrated).")
    if "calibrated" in cal:
        cc = cal["calibrated"]
        text += (f" After the {cc['kind']} calibrator fitted on the validation split: ECE {cc['ece']:.3f}, "
                 f"Brier {cc['brier']:.3f}.")
    blocks += [("h2", "Calibration"), ("p", text)]
    if notes.items:
        blocks += [("h2", "Undefined figures"), ("list", [f"[{i}] {t}" for i, t in enumerate(notes.items, 1)])]
    blocks.append(("h2", "Figures"))
    captions = {"roc.png": "ROC curve", "confusion.png": "Confusion matrix", "reliability.png": "Reliability curve",
                "tsne.png": f"t-SNE of the features before the final fully-connected layer (Fig. 2 form; {tsne_note})"}
    for name in images:
        blocks += [("p", captions[name]), ("img", name)]
    return blocks


# --- plots ---------------------------------------------------------------------------------------

def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_roc(roc: pd.DataFrame, auc: dict[str, Any], path: Path, synthetic: bool) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    if len(roc):
        label = f"AUC {auc['value']:.3f}" + (f" ({auc['ci'][0]:.3f}–{auc['ci'][1]:.3f})" if auc.get("ci") else "")
        ax.plot(roc["fpr"], roc["tpr"], label=label)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\n" + auc.get("reason", ""), ha="center", va="center", wrap=True)
    ax.set(xlabel="1 - specificity", ylabel="Sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title="ROC" + (" (synthetic data)" if synthetic else ""))
    _save(fig, path)


def plot_confusion(conf: dict[str, int], threshold: float, path: Path, synthetic: bool) -> None:
    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    mat = np.array([[conf["tp"], conf["fn"]], [conf["fp"], conf["tn"]]])
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < mat.max() / 2 else "white")
    ax.set_xticks([0, 1], ["COVID-19", "Non-COVID-19"])
    ax.set_yticks([0, 1], ["COVID-19", "Non-COVID-19"])
    ax.set(xlabel=f"Called (score >= {threshold:g})", ylabel="True label",
           title="Confusion matrix" + (" (synthetic)" if synthetic else ""))
    _save(fig, path)


def plot_reliability(curves: dict[str, dict[str, np.ndarray]], path: Path, synthetic: bool) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    for name, c in curves.items():
        used = c["n"] > 0
        ax.plot(c["mean_score"][used], c["fraction_covid"][used], marker="o", label=name)
    ax.set(xlabel="Mean score in bin", ylabel="Fraction COVID-19", xlim=(0, 1), ylim=(0, 1),
           title="Reliability" + (" (synthetic data)" if synthetic else ""))
    ax.legend(loc="upper left")
    _save(fig, path)


def plot_tsne(embedding: np.ndarray, labels: np.ndarray, wrong: np.ndarray, path: Path, synthetic: bool) -> None:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    for value, name, color in ((1, "COVID-19", "tab:red"), (0, "Non-COVID-19", "tab:blue")):
        sel = labels == value
        ax.scatter(embedding[sel, 0], embedding[sel, 1], s=12, c=color, label=name, alpha=0.8)
    if wrong.any():
        ax.scatter(embedding[wrong, 0], embedding[wrong, 1], s=60, facecolors="none", edgecolors="black",
                   label="misclassified")
    ax.set(xticks=[], yticks=[], title="t-SNE of final features" + (" (synthetic data)" if synthetic else ""))
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)


def write_report(folder: Path, metrics: dict[str, Any], roc: pd.DataFrame, curves: dict[str, dict[str, np.ndarray]],
                 *, embedding: np.ndarray | None, labels: np.ndarray, wrong: np.ndarray, tsne_note: str = "",
                 provenance: dict[str, str] | None = None, links: dict[str, str] | None = None) -> None:
    """Write the PNG plots, ``report.md`` and ``report.html`` into ``folder``; ``provenance``
    (model version, run, commit...) and the time of writing go at its end."""
    syn = metrics["synthetic"]
    plot_roc(roc, metrics["auc"], folder / "roc.png", syn)
    plot_confusion(metrics["confusion"], metrics["threshold"], folder / "confusion.png", syn)
    plot_reliability(curves, folder / "reliability.png", syn)
    images = ["roc.png", "confusion.png", "reliability.png"]
    if embedding is not None:
        plot_tsne(embedding, labels, wrong, folder / "tsne.png", syn)
        images.append("tsne.png")
    blocks = build_blocks(metrics, images, tsne_note)
    if (metrics.get("phantom_ceiling") or {}).get("auc", {}).get("value") is not None:  # undefined on one class
        c = metrics["phantom_ceiling"]["auc"]
        ci = f" (95% CI {c['ci'][0]:.3f}-{c['ci'][1]:.3f})" if c.get("ci") else ""
        blocks.append(("p", f"**Phantom ceiling**: the planted finding patterns themselves reach AUC {c['value']:.3f}{ci} "
                            "on this set (a reader who knew each synthetic scan's pattern); read the model's AUC "
                            "against it."))
    if "saliency" in metrics:
        blocks += saliency_blocks(metrics["saliency"], "saliency.png" if (folder / "saliency.png").is_file() else None)
    blocks += [("link", (text, href)) for text, href in (links or {}).items()]
    blocks += provenance_blocks(provenance)
    (folder / "report.md").write_text(to_markdown(blocks))
    (folder / "report.html").write_text(to_html(blocks, folder))
