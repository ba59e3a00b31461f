"""The monitoring pipeline: one task, the drift report of the prediction log (``components/monitor.py``).

Meant for a recurring run (``covidnet pipeline submit --pipeline covidnet-monitor --schedule
'0 * * * *'``): each run judges the last ``monitor.drift.window_hours`` of served studies
against the reference profiles of the versions that served them, and fails on an alarm
(``fail_on_alarm``), which is what turns a scheduled run red.

The task reads the prediction log's URL from the Kubernetes secret ``pipeline.secrets.predlog``
(its variable must be ``monitor.log.url_env``; a test checks it) and MLflow's
settings from ``pipeline.secrets.mlflow``; its image, resources and retries come from the ``pipeline``
section of params, as for the other pipelines. Registered as ``covidnet-monitor`` in
:data:`covidnet.kfp.runner.PIPELINES`.
"""

from typing import Any, NamedTuple

from kfp.dsl import HTML, Dataset, Metrics

from covidnet.kfp.components import monitor as m
from covidnet.kfp.pipelines.tasks import limits, network, secret
from kfp import dsl

Outputs = NamedTuple("Outputs", [("report", HTML), ("drift_json", Dataset), ("drift", Metrics)])


def covidnet_monitor(settings: Any) -> Any:
    """The drift-monitoring pipeline, with the resources, retries and secrets of ``settings``."""
    @dsl.pipeline(name="covidnet-monitor", description="COVIDNet endpoint monitoring: drift of the prediction log "
                                                       "against the served versions' reference profiles; fails on alarm.")
    def pipeline(params_yaml: str, profile: str = "default", window_hours: float = -1.0, until: str = "",
                 fail_on_alarm: bool = True) -> Outputs:
        """window_hours below 0 keeps monitor.drift.window_hours; until "" = the run's start."""
        task = m.monitor_drift(params_yaml=params_yaml, profile=profile, window_hours=window_hours, until=until,
                               fail_on_alarm=fail_on_alarm)
        limits(task, settings).set_caching_options(False)  # the log grows and "now" moves: never reuse a report
        network(task, settings)
        for name in ("predlog", "mlflow"):
            secret(task, getattr(settings.secrets, name))
        return Outputs(report=task.outputs["report"], drift_json=task.outputs["drift_json"],
                       drift=task.outputs["drift"])

    return pipeline
