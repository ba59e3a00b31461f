"""The ``pacs`` section of params.yaml: the PACS, polling, retries, the Secondary Capture, the SCP, the worklist."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.params import ParamsError, section

_UID_ROOT = re.compile(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$")


@dataclass(frozen=True)
class RetryParams:
    """``pacs.retry``: exponential back-off of one request to a PACS or endpoint that is away."""

    count: int                # retries after the first try
    backoff_s: float          # first wait
    factor: float             # each next wait is this many times longer ...
    max_backoff_s: float      # ... up to this

    def __post_init__(self) -> None:
        if self.count < 0 or self.backoff_s < 0 or self.factor < 1 or self.max_backoff_s < self.backoff_s:
            raise ParamsError("pacs.retry: count >= 0, backoff_s >= 0, factor >= 1, max_backoff_s >= backoff_s; got "
                              f"{self.count}, {self.backoff_s}, {self.factor}, {self.max_backoff_s}")

    def waits(self) -> list[float]:
        """The waits before each retry, in seconds (``count`` of them)."""
        return [min(self.max_backoff_s, self.backoff_s * self.factor ** i) for i in range(self.count)]


@dataclass(frozen=True)
class CaptureParams:
    """``pacs.capture``: the Secondary Capture image beside the SR."""

    source: str                            # the image source (covidnet.pacs.capture.SOURCES)
    tiles: int                             # slices in the montage
    tile_px: int                           # pixels per tile side
    window_hu: tuple[float, float]         # grey window (HU)
    alpha: float                           # mask opacity

    def __post_init__(self) -> None:
        if self.tiles < 1 or self.tile_px < 32 or not 0 <= self.alpha <= 1 or not self.window_hu[0] < self.window_hu[1]:
            raise ParamsError("pacs.capture: tiles >= 1, tile_px >= 32, alpha in [0, 1], window_hu [low, high]; got "
                              f"{self.tiles}, {self.tile_px}, {self.alpha}, {list(self.window_hu)}")


@dataclass(frozen=True)
class ListenParams:
    """``pacs.listen``: the DIMSE storage SCP (``covidnet pacs listen``)."""

    ae_title: str
    host: str
    port: int
    quiet_s: float            # a pushed study is complete after this long without a new file
    keep_h: float             # spooled files are removed this long after the study's last file
    spool: Path

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title) <= 16 or not 0 < self.port < 65536 or self.quiet_s < 0 or self.keep_h <= 0:
            raise ParamsError("pacs.listen: ae_title of 1-16 characters, port in 1-65535, quiet_s >= 0, keep_h > 0; "
                              f"got {self.ae_title!r}, {self.port}, {self.quiet_s}, {self.keep_h}")


@dataclass(frozen=True)
class WorklistParams:
    """``pacs.worklist``: ``covidnet worklist`` and ``GET /covidnet/worklist``."""

    refresh_s: float
    limit: int
    pacs_cache_s: float

    def __post_init__(self) -> None:
        if self.refresh_s <= 0 or self.limit < 1 or self.pacs_cache_s < 0:
            raise ParamsError(f"pacs.worklist: refresh_s > 0, limit >= 1, pacs_cache_s >= 0; got {self.refresh_s}, "
                              f"{self.limit}, {self.pacs_cache_s}")


@dataclass(frozen=True)
class PacsParams:
    """The ``pacs`` section of params.yaml (every number of the loop comes from there)."""

    url: str
    dicomweb_root: str
    viewer_url: str
    poll_s: float
    stable_age_s: float
    page_size: int
    timeout_s: float
    lease_s: float
    uid_root: str
    manufacturer: str
    sr_series_number: int
    sc_series_number: int
    retry: RetryParams
    capture: CaptureParams
    listen: ListenParams
    worklist: WorklistParams

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ParamsError(f"pacs.url must be http(s)://HOST[:PORT], got {self.url!r}")
        if self.poll_s <= 0 or self.stable_age_s < 0 or self.page_size < 1 or self.timeout_s <= 0 or self.lease_s <= 0:
            raise ParamsError("pacs: poll_s > 0, stable_age_s >= 0, page_size >= 1, timeout_s > 0, lease_s > 0; got "
                              f"{self.poll_s}, {self.stable_age_s}, {self.page_size}, {self.timeout_s}, {self.lease_s}")
        if not _UID_ROOT.match(self.uid_root) or len(self.uid_root) > 40:
            raise ParamsError(f"pacs.uid_root must be a UID prefix ending in '.', at most 40 characters (room for "
                              f"32 digits of a derived UID), got {self.uid_root!r}")

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (``url`` + ``dicomweb_root``)."""
        return self.url.rstrip("/") + "/" + self.dicomweb_root.strip("/")


def pacs_params(params: dict[str, Any], **overrides: Any) -> PacsParams:
    """The ``pacs`` section as :class:`PacsParams`; ``overrides`` (non-None) replace top-level keys (CLI flags)."""
    import dataclasses

    pp = section(params, "pacs", PacsParams)
    kept = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(pp, **kept) if kept else pp
