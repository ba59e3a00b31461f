"""The monitoring component: the drift report of the prediction log, for a recurring run.

A thin wrapper over :func:`covidnet.monitor.report.run_drift` (what ``covidnet monitor drift``
runs). The pod needs the prediction log's URL in the environment variable named by
``monitor.log.url_env`` and MLflow's (the references of the served versions are read from
their training runs); the pipeline (``pipelines/monitor_pipeline.py``) maps both from
Kubernetes secrets. An alarm fails the task (after the report is written) when
``fail_on_alarm`` is set, so a scheduled run turns red and the usual run alerts fire.
"""

from kfp.dsl import HTML, Dataset, Metrics, Output

from covidnet.kfp.components.stages import IMAGE
from kfp import dsl


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def monitor_drift(params_yaml: str, profile: str, report: Output[HTML], drift_json: Output[Dataset],
                  drift: Output[Metrics], window_hours: float = -1.0, until: str = "",
                  fail_on_alarm: bool = True) -> str:
    """Drift of the last ``window_hours`` (below 0: ``monitor.drift.window_hours``) before ``until``
    (ISO 8601, "" = now) against each served version's reference; returns the status
    (``ok``, ``alarm``, ``insufficient``, ``no_data``)."""
    import shutil
    import tempfile
    from pathlib import Path

    from covidnet.kfp.runner import log_metrics, stage_failure, stage_params
    from covidnet.monitor.report import run_drift

    with stage_failure("monitor_drift", report.path, drift_json.path, drift.path):
        params = stage_params(params_yaml, profile)
        with tempfile.TemporaryDirectory(prefix="covidnet-drift-") as out:
            result = run_drift(params, until=until or None, hours=window_hours if window_hours > 0 else None,
                               out_dir=out)
            shutil.copyfile(Path(out) / "drift.html", report.path)
            shutil.copyfile(Path(out) / "drift.json", drift_json.path)
        if result["status"] == "error":
            raise ValueError("; ".join(result["errors"]))
        figures = {"alarm": float(result["alarm"]), "studies": float(result["n"])}
        for m in result["models"]:
            for name, s in m.get("series", {}).items():
                figures.update({f"{m['model_version']}.{name}.psi": s["psi"], f"{m['model_version']}.{name}.ks": s["ks"]})
        log_metrics(drift, figures)
    if result["alarm"] and fail_on_alarm:
        drifting = "; ".join(f"{m['model_name']} {m['model_version']}: {', '.join(m['drifted'])}"
                             for m in result["models"] if m.get("status") == "alarm")
        raise RuntimeError(f"monitor_drift: DRIFT ALARM over {result['window']['since']} .. "
                           f"{result['window']['until']} ({drifting}); report in {report.path}")
    return result["status"]
