"""The model folder: one format, one type (:class:`ModelCard`), for every stage that reads or writes it.

A model folder (the ``train`` stage's output, a registered version's ``covidnet/`` artifact
folder, what KServe's storage initializer puts at ``/mnt/models``) holds::

    weights.pt              the network's state dict (loaded with ``weights_only=True``)
    model.json              the card: every constructor argument of the network, the
                            preprocessing and training settings, the training summary and
                            provenance (:class:`ModelCard`)
    reference/qc.csv        the training scans' QC values (the monitor's reference)
    reference/val_scores.csv  the validation scores at the best epoch
    calibrator.json         the score calibrator fitted by ``evaluate`` (optional)

Nothing outside this module spells these names: train writes the folder through
:meth:`ModelCard.write`, and evaluate, promote, serve, monitor and the Kubeflow adapter read
it through :meth:`ModelCard.read` and :meth:`ModelCard.load`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from covidnet.errors import CovidnetError

#: The training run's artifact folder holding the model folder (``train`` logs it, ``evaluate``
#: adds the calibrator): what a registered version is served and monitored from.
MODEL_ARTIFACT = "covidnet"


class ModelFolderError(CovidnetError, FileNotFoundError):
    """A model folder lacks a file or its card cannot be read; the message names the file."""


@dataclass(frozen=True)
class ModelCard:
    """The card (``model.json``) of a model folder.

    Attributes:
        config: ``{"model": constructor arguments, "train": train settings, "preprocess":
            preprocessing settings, "tensors_version": ..., "world_size": ...}``.
        best_epoch: the epoch whose weights the folder holds.
        val_auc: validation AUC at that epoch (None when undefined).
        val_loss: validation loss at that epoch.
        epochs_run: epochs trained.
        qc_reference: the folder-relative path of the QC reference table, or None.
        score_reference: the folder-relative path of the validation scores, or None.
        provenance: ``tensors_version``, ``synthetic`` (``"true"``/``"false"``), ``profile``
            and any other string tags, stored at the top level of the JSON. Nothing of one
            particular run (its MLflow id, the git commit) is in the card, so identical training
            gives an identical folder; the run is recorded beside the report
            (:func:`covidnet.tracking.write_run_record`).
    """

    FILE: ClassVar[str] = "model.json"
    WEIGHTS: ClassVar[str] = "weights.pt"
    CALIBRATOR: ClassVar[str] = "calibrator.json"
    QC_REFERENCE: ClassVar[str] = "reference/qc.csv"
    SCORE_REFERENCE: ClassVar[str] = "reference/val_scores.csv"

    config: dict[str, Any]
    best_epoch: int = 0
    val_auc: float | None = None
    val_loss: float | None = None
    epochs_run: int = 0
    qc_reference: str | None = None
    score_reference: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[tuple[str, ...]] = ("config", "best_epoch", "val_auc", "val_loss", "epochs_run",
                                          "qc_reference", "score_reference")

    # ------------------------------------------------------------------ reading

    @classmethod
    def is_folder(cls, folder: Path | str) -> bool:
        """Whether ``folder`` holds a card and weights."""
        folder = Path(folder)
        return (folder / cls.FILE).is_file() and (folder / cls.WEIGHTS).is_file()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = FILE) -> "ModelCard":
        """A card from its JSON object (unknown top-level keys are provenance)."""
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ModelFolderError(f"{source}: not a model card (no 'config' object)")
        known = {k: data[k] for k in cls._FIELDS if k in data}
        provenance = {k: v for k, v in data.items() if k not in cls._FIELDS}
        return cls(**known, provenance=provenance)

    @classmethod
    def read(cls, folder: Path | str, *, weights: bool = True) -> "ModelCard":
        """Read ``folder``'s card; with ``weights``, also require the weights file.

        Raises:
            ModelFolderError: the card (or the weights) is missing or not a card (named).
        """
        folder = Path(folder)
        path = folder / cls.FILE
        needed = (path, folder / cls.WEIGHTS) if weights else (path,)
        for p in needed:
            if not p.is_file():
                raise ModelFolderError(f"{p}: not found (is {folder} a trained model folder?)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path}: cannot read the model card: {exc}") from exc
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``model.json`` (provenance at the top level)."""
        data = {k: getattr(self, k) for k in self._FIELDS}
        return {**data, **self.provenance}

    # ------------------------------------------------------------------ writing

    def write(self, folder: Path | str) -> Path:
        """Write ``model.json`` into ``folder`` (a folder being built atomically by the caller)."""
        path = Path(folder) / self.FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def write_weights(cls, folder: Path | str, state_dict: dict[str, Any]) -> Path:
        """Save the network's state dict as the folder's weights."""
        import torch

        path = Path(folder) / cls.WEIGHTS
        torch.save(state_dict, path)
        return path

    # ------------------------------------------------------------------ using

    @property
    def mlflow_run_id(self) -> str | None:
        """The training run a registry or an older card recorded in the card (None for folders ``train`` writes)."""
        return self.provenance.get("mlflow_run_id")

    @property
    def synthetic(self) -> bool | None:
        """Whether the model was trained on a SYNTHETIC cohort (None when the card does not say)."""
        value = self.provenance.get("synthetic")
        return None if value is None else str(value).lower() == "true"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input volume's shape ``(1, D, H, W)``, from the model config or the preprocessing."""
        shape = self.config["model"].get("input_shape")
        if shape:
            return tuple(int(v) for v in shape)
        pre = self.config["preprocess"]
        return (1, int(pre["depth"]), int(pre["crop"]), int(pre["crop"]))

    @classmethod
    def digest(cls, folder: Path | str) -> str:
        """``sha256:`` and 12 hex digits of the folder's weights: the same for a folder and its
        registered version, whatever the registry calls it."""
        h = hashlib.sha256()
        with open(Path(folder) / cls.WEIGHTS, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()[:12]

    def version(self, folder: Path | str) -> str:
        """The ``version`` a registry wrote into the card, else :meth:`digest` of ``folder``."""
        return str(self.provenance.get("version") or self.digest(folder))

    @classmethod
    def folder_version(cls, folder: Path | str) -> str:
        """:meth:`version` of the model folder ``folder`` (its card read without requiring weights)."""
        return cls.read(folder, weights=False).version(folder)

    @classmethod
    def load(cls, folder: Path | str, device: str = "cpu"):
        """Rebuild the network from the card and load the weights, in eval mode.

        Returns:
            ``(model, card)``: a :class:`covidnet.model.network.COVIDNet` on ``device``.

        Raises:
            ModelFolderError: the folder lacks its card or weights (named).
        """
        import torch

        from covidnet.model.network import COVIDNet

        card = cls.read(folder)
        model = COVIDNet(**card.config["model"])
        model.load_state_dict(torch.load(Path(folder) / cls.WEIGHTS, map_location=device, weights_only=True))
        return model.to(device).eval(), card


def download_model_folder(run_id: str, tracking_uri: str, dst: Path | str) -> Path:
    """The :data:`MODEL_ARTIFACT` folder of training run ``run_id`` downloaded into ``dst``.

    Raises:
        mlflow.exceptions.MlflowException, OSError: the run or its folder cannot be read.
    """
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(dst),
                                                    tracking_uri=tracking_uri))
