"""The train stage across nodes: a component that runs a Kubeflow Training Operator PyTorchJob.

The component stays in a small CPU pod: it puts the tensors and params on the shared PVC
(mounted by the pipeline at ``pipeline.pytorchjob.mount_path``), creates the PyTorchJob
through the Kubernetes API, waits for it, and copies the model and report back into its
output artifacts (:func:`covidnet.kfp.pytorchjob.train_with_pytorchjob`). Its service account
needs ``create``, ``get`` and ``delete`` on ``pytorchjobs.kubeflow.org``
(``pipelines/pytorchjob-workspace.yaml``). No cluster runs here: tests drive it with a stand-in
for the Kubernetes API.
"""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from covidnet.kfp.components.stages import IMAGE
from kfp import dsl


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_pytorchjob(params_yaml: str, profile: str, preprocessed: Input[Dataset], model: Output[Model],
                     train_report: Output[Dataset], train_metrics: Output[Metrics]):
    """Train as a PyTorchJob of ``pipeline.pytorchjob.nodes`` pods x ``gpus_per_node`` GPUs; wait for it."""
    from pathlib import Path

    from covidnet.kfp.pytorchjob import train_with_pytorchjob
    from covidnet.kfp.runner import log_metrics, stage_failure, stage_params

    with stage_failure("train_pytorchjob", model.path, train_report.path, train_metrics.path):
        params = stage_params(params_yaml, profile)
        result = train_with_pytorchjob(params, params_yaml, Path(preprocessed.path), Path(model.path),
                                       Path(train_report.path))
        model.metadata["mlflow_run_id"] = result.run_id
        model.metadata["pytorchjob"] = f"{result.namespace}/{result.name}"
        log_metrics(train_metrics, Path(train_report.path) / "metrics.json")
