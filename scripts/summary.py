"""Print what `dvc repro` produced and where (run by scripts/demo.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from covidnet.params import is_synthetic, load_params
from covidnet.paths import Paths


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 2**20:.1f} MiB"


def _reproduced(paths: Paths) -> str:
    """Whether this run's outputs have the hashes the committed dvc.lock records (the model, the metrics).

    Left out: the outputs that differ between identical runs
    (:meth:`covidnet.paths.Paths.varies_every_run`: run records, the reports' provenance).
    """
    import subprocess

    import yaml

    try:
        committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no committed dvc.lock)"

    def outs(text: str) -> dict[str, str]:
        stages = (yaml.safe_load(text) or {}).get("stages", {})
        return {o["path"]: o.get("md5", "") for st in stages.values() for o in st.get("outs", [])}

    before, now = outs(committed), outs(Path("dvc.lock").read_text())
    varying = sorted(p for p in now if paths.varies_every_run(p))
    differ = sorted(p for p in now if p in before and before[p] != now[p] and p not in varying)
    if not differ:
        return (f"every output has the committed dvc.lock's hash (model and metrics included), but those that "
                f"record the run ({', '.join(varying)})")
    return f"{len(differ)} output(s) differ from the committed dvc.lock: {', '.join(differ[:6])}"


def main() -> None:
    params = load_params()
    paths = Paths.from_params(params)
    synthetic = is_synthetic(params)
    print()
    print(f"== COVIDNet: profile '{params['profile']}'" + (" -- SYNTHETIC cohort ==" if synthetic else " =="))
    print((paths.flow / "flow.md").read_text())
    index = pd.read_csv(paths.preprocessed / "index.csv")
    qc = pd.read_csv(paths.preprocessed / "qc.csv")
    rows = [
        ("DICOM tree", paths.dicom, _size(paths.dicom)),
        ("manifest", paths.manifest, "patients.csv, scans.csv"),
        ("header tables", paths.index, "series.csv, files.csv, skipped.csv"),
        ("validation", paths.validation, "results.json, index.html"),
        ("cohort + exclusions", paths.cohort, "cohort.csv, exclusions.csv, flow.json"),
        ("split", paths.split, f"{len(pd.read_csv(paths.split))} scans"),
        ("tensors", paths.preprocessed, f"{len(index)} tensors, {_size(paths.preprocessed / 'tensors')}, qc.csv ({len(qc)} rows)"),
        ("cohort metrics", paths.metrics, "dvc metrics show"),
    ]
    if (paths.train_report / "metrics.json").is_file():
        t = json.loads((paths.train_report / "metrics.json").read_text())
        auc = "n/a" if t["val_auc"] is None else f"{t['val_auc']:.3f}"
        rows.append(("model", paths.model, f"best epoch {t['best_epoch']} of {t['epochs_run']}, validation AUC {auc}"))
    for name in ("test", "external"):
        m_path = paths.evaluation / name / "metrics.json"
        if m_path.is_file():
            m = json.loads(m_path.read_text())
            auc = m["auc"]["value"]
            text = "AUC n/a" if auc is None else f"AUC {auc:.3f} (95% CI {m['auc']['ci'][0]:.3f}-{m['auc']['ci'][1]:.3f})"
            ceiling = (m.get("phantom_ceiling") or {}).get("auc", {}).get("value")
            if ceiling is not None:
                text += f" [phantom's own AUC {ceiling:.3f}]"
            rows.append((f"evaluation ({name})", paths.evaluation / name, f"{m['n']} patients, {text}, report.html"))
            sal = m.get("saliency") or {}
            if "enrichment" in sal:
                e, d = sal["enrichment"], (sal.get("anchors") or {}).get("density", {}).get("enrichment")
                rows.append((f"saliency ({name})", paths.evaluation / name / "saliency.png",
                             f"{e['value']:.2f}x chance in the planted lesions (95% CI {e['ci'][0]:.2f}-{e['ci'][1]:.2f}), "
                             f"{sal['n_checked']} true positives" + (f"; density alone {d['value']:.2f}x" if d else "")))
    serve = None
    if paths.decision.is_file():
        d = json.loads(paths.decision.read_text())
        alias = "champion" if d["promoted"] else "challenger"
        failed = "; ".join(r["name"] for r in d["rules"] if not r["passed"])
        margins = ", ".join(f"{r['name']} {r['value'] - r['threshold']:+.3f}" for r in d["rules"]
                            if r.get("value") is not None and r.get("threshold") is not None)
        rows.append(("promotion", paths.decision, f"{d['registered_model']} version {d['version']} -> {alias}"
                     + (f" (gate failed: {failed})" if failed else "") + (f"; margins {margins}" if margins else "")))
        serve = ".venv/bin/covidnet serve" + ("" if d["promoted"] else
                                              f" --model-uri models:/{d['registered_model']}@challenger")
    width, path_width = max(len(r[0]) for r in rows), max(len(str(r[1])) for r in rows)
    for name, path, what in rows:
        print(f"  {name:<{width}}  {str(path):<{path_width}}  {what}")
    print("  MLflow runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db")
    print(f"  Reproduced: {_reproduced(paths)}")
    if serve:
        print(f"  Serve it:    {serve}   (then: .venv/bin/covidnet predict STUDY_FOLDER --url http://127.0.0.1:8080)")


if __name__ == "__main__":
    main()
