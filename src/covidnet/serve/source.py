"""Where the served model comes from: a registered MLflow version or a local model folder.

``serve.model_uri`` (or ``covidnet serve --model-uri``) names one of:

``models:/<name>@<alias>``
    the version the alias points at (default ``models:/covidnet@champion``: what the promote
    gate chose);
``models:/<name>/<version>``
    one version by number;
a local folder
    a model folder as ``covidnet train`` writes it, e.g. ``/mnt/models`` where KServe's storage
    initializer puts a ``storageUri``.

For a registered version, :func:`fetch_model` resolves the alias to its version and training
run and downloads the run's whole ``covidnet/`` artifact folder (the model folder that
``train`` logged: the weights, the model card, the reference profile, and the
``calibrator.json`` that ``evaluate`` fitted for that model) into a temporary folder that lives
as long as the returned :class:`ModelSource`. The operating threshold comes from the version's
``covidnet.threshold`` tag, set by ``promote``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidnet.errors import CovidnetError, MissingInputError

log = logging.getLogger(__name__)

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelSourceError(CovidnetError, ValueError):
    """The model URI cannot be served: malformed, unknown model, alias or version, no model folder."""


@dataclass(frozen=True)
class ModelSource:
    """A model folder on this machine and what the registry says about it.

    Attributes:
        model_dir: the local folder (:class:`covidnet.model.card.ModelCard`'s format).
        uri: what was asked for (``models:/covidnet@champion`` or the folder).
        name: the registered model name (None for a plain folder).
        version: the registry version (None for a plain folder).
        alias: the alias resolved (None unless asked for by alias).
        run_id: the training run of the version.
        threshold: the ``covidnet.threshold`` tag of the version, if promote recorded one.
    """

    model_dir: Path
    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    threshold: float | None = None
    _keep: Any = field(default=None, repr=False, compare=False)  # the temporary folder, removed with the source

    @property
    def registered(self) -> bool:
        return self.version is not None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, alias, version)`` of a ``models:/`` URI, None for anything else (a folder).

    Raises:
        ModelSourceError: a ``models:/`` URI of another form, or another URI scheme.
    """
    if uri.startswith("models:/"):
        m = _REGISTRY_URI.match(uri)
        if m is None:
            raise ModelSourceError(f"model URI {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
        return m["name"], m["alias"], m["version"]
    if re.match(r"^[a-z][a-z0-9+.-]*:/", uri) and not uri.startswith("file:/"):
        raise ModelSourceError(f"model URI {uri!r}: only models:/<name>@<alias>, models:/<name>/<version> or a local "
                               "folder are served (for s3:// let KServe's storage initializer copy it to /mnt/models)")
    return None


def fetch_model(uri: str, tracking_uri: str) -> ModelSource:
    """Resolve ``uri`` and make its model folder available locally (see the module docstring).

    Args:
        uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a folder.
        tracking_uri: the MLflow store holding the registry (``mlflow.tracking_uri``, or
            ``MLFLOW_TRACKING_URI``); unused for a folder.

    Raises:
        ModelSourceError: no SQLite store at ``tracking_uri``, an unknown registered model (the
            registered ones are listed), an alias it does not have (its aliases are listed), an
            unknown version, a version whose run has no ``covidnet/`` folder with weights
            and a model card.
        FileNotFoundError: a folder that does not exist.
    """
    parsed = parse_model_uri(uri)
    if parsed is None:
        folder = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not folder.is_dir():
            raise MissingInputError(f"{folder}: model folder not found")
        return ModelSource(model_dir=folder, uri=uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from covidnet.model.card import MODEL_ARTIFACT, ModelCard, download_model_folder
    from covidnet.promote.registry import THRESHOLD_TAG

    name, alias, number = parsed
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        # MLflow would create an empty store there; say what is missing instead
        raise ModelSourceError(f"{uri}: no MLflow store at {tracking_uri} (mlflow.tracking_uri, relative to "
                               f"{Path.cwd()}): `dvc repro` (train, evaluate, promote) makes one; or serve a folder")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ModelSourceError(f"{uri}: no registered model {name!r} in {tracking_uri} (registered: "
                               f"{', '.join(known) or 'none'}; `covidnet promote` registers one)") from None
    if alias is not None:
        aliases = dict(registered.aliases)
        if alias not in aliases:
            listed = ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
            raise ModelSourceError(f"{uri}: registered model {name!r} has no alias {alias!r} (its aliases: {listed}); "
                                   "serve one of those (--model-uri models:/NAME@ALIAS) or a model folder (--model-dir)")
        version = client.get_model_version_by_alias(name, alias)
    else:
        try:
            version = client.get_model_version(name, number)
        except MlflowException:
            raise ModelSourceError(f"{uri}: registered model {name!r} has no version {number}") from None
    if not version.run_id:
        raise ModelSourceError(f"{uri}: version {version.version} names no training run, so no model folder")
    tmp = tempfile.TemporaryDirectory(prefix="covidnet-model-")
    try:
        local = download_model_folder(version.run_id, tracking_uri, tmp.name)
    except (MlflowException, OSError) as exc:
        tmp.cleanup()
        raise ModelSourceError(f"{uri}: version {version.version}: run {version.run_id} has no '{MODEL_ARTIFACT}/' "
                               f"artifact folder (logged by `covidnet train`): {exc}") from None
    missing = [f for f in (ModelCard.WEIGHTS, ModelCard.FILE) if not (local / f).is_file()]
    if missing:
        tmp.cleanup()
        raise ModelSourceError(f"{uri}: version {version.version}: run {version.run_id}'s '{MODEL_ARTIFACT}/' folder "
                               f"lacks {', '.join(missing)}")
    raw = version.tags.get(THRESHOLD_TAG)
    try:
        threshold = None if raw is None else float(raw)
    except ValueError:
        tmp.cleanup()
        raise ModelSourceError(f"{uri}: version {version.version}: tag {THRESHOLD_TAG} {raw!r} is not a number") from None
    log.info("serving %s: version %s (run %s) from %s", uri, version.version, version.run_id, tracking_uri)
    return ModelSource(model_dir=local, uri=uri, name=name, version=str(version.version), alias=alias,
                       run_id=version.run_id, threshold=threshold, _keep=tmp)
