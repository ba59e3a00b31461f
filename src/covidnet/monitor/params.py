"""The ``monitor`` section of params.yaml: the prediction log, drift rules, /metrics window, PCR feedback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from covidnet.monitor.drift import DriftParams
from covidnet.params import ParamsError


@dataclass(frozen=True)
class LogParams:
    """The ``monitor.log`` section of params.yaml."""

    url: str | None                  # SQLAlchemy URL; None: SQLite at paths.predlog
    url_env: str                     # environment variable overriding url
    key_env: str                     # environment variable holding the HMAC key
    allow_insecure_key: bool         # synthetic demo: a public key when key_env is unset
    busy_timeout_s: float            # SQLite: how long a writer waits for the lock

    def __post_init__(self) -> None:
        for name in ("url_env", "key_env"):
            value = getattr(self, name)
            if not value or not value.replace("_", "a").isalnum():
                raise ParamsError(f"monitor.log.{name} must name an environment variable, got {value!r}")
        if not self.busy_timeout_s > 0:
            raise ParamsError(f"monitor.log.busy_timeout_s must be > 0, got {self.busy_timeout_s!r}")
        if self.url is not None and not self.url.strip():
            raise ParamsError("monitor.log.url must be a SQLAlchemy URL or null, got ''")


@dataclass(frozen=True)
class FeedbackParams:
    """The ``monitor.feedback`` section of params.yaml."""

    pcr_max_days: int                  # a PCR result labels its patient's predictions within this many days
    window_days: float                 # `covidnet monitor performance` default window: the last N days

    def __post_init__(self) -> None:
        if self.pcr_max_days < 0:
            raise ParamsError(f"monitor.feedback.pcr_max_days must be >= 0, got {self.pcr_max_days!r}")
        if not self.window_days > 0:
            raise ParamsError(f"monitor.feedback.window_days must be > 0, got {self.window_days!r}")


@dataclass(frozen=True)
class MonitorParams:
    """The ``monitor`` section of params.yaml."""

    log: LogParams
    drift: DriftParams
    metrics_window: int                # /metrics: rolling drift over the last N answered studies
    feedback: FeedbackParams

    def __post_init__(self) -> None:
        if self.metrics_window < self.drift.min_window:
            raise ParamsError(f"monitor.metrics_window {self.metrics_window!r} must be >= monitor.drift.min_window "
                              f"{self.drift.min_window} (else the /metrics alarm can never be judged)")


def monitor_params(params: dict[str, Any]) -> MonitorParams:
    """The ``monitor`` section of merged params (errors name the file and the dotted key)."""
    from covidnet.params import section

    return section(params, "monitor", MonitorParams)
