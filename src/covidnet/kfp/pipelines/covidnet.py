"""The COVIDNet pipelines: cohort -> validate -> exclude -> split -> preprocess -> train -> evaluate -> promote.

Three pipelines share one wiring (:func:`_stages`); each is built by a function of the
``pipeline`` section of params (:class:`covidnet.kfp.params.PipelineParams`), so every
image, resource, retry, secret and volume comes from params.yaml, read when the pipeline is
compiled (``covidnet pipeline compile``; the committed YAML is compiled from params.yaml):

- :func:`covidnet` (``covidnet_pipeline.yaml``): the first task ``dvc get``s the cohort (DICOM
  tree + manifest) at ``cohort_revision`` of the DVC repository ``cohort_repo``; train runs in
  one pod, torchrun over its GPUs;
- :func:`covidnet_synthetic` (``covidnet_synthetic_pipeline.yaml``): the first task writes the
  synthetic cohort instead; what ``covidnet pipeline run --local`` runs by default;
- :func:`covidnet_pytorchjob` (``covidnet_pytorchjob_pipeline.yaml``): as ``covidnet``, but
  train runs as a Kubeflow Training Operator PyTorchJob across nodes.

The promotion gate is decided inside the promote component (``dsl.If`` is not evaluated by
``kfp.local``). Resources, accelerators, secrets, volumes and retries apply on a cluster only.
"""


from typing import Any, NamedTuple

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from covidnet.kfp.components import pytorchjob as d
from covidnet.kfp.components import stages as c
from covidnet.kfp.pipelines.tasks import limits, network, secret
from kfp import dsl, kubernetes

Outputs = NamedTuple("Outputs", [("cohort_metrics", Metrics), ("flow", Markdown), ("train_metrics", Metrics),
                                 ("model", Model), ("metrics", Metrics), ("roc", ClassificationMetrics),
                                 ("report", HTML), ("decision", Dataset), ("gate", Metrics)])


def _train_in_pod(settings: Any, common: dict, preprocessed: Any, nproc_per_node: Any,
                  checkpoint_dir: Any) -> dsl.PipelineTask:
    r, t = settings.resources, settings.train
    task = limits(c.train(preprocessed=preprocessed, nproc_per_node=nproc_per_node, checkpoint_dir=checkpoint_dir,
                           **common), settings, train=True)
    if t.retries:  # a retried pod resumes from checkpoint_dir's last checkpoint ("" starts over)
        network(task, settings, count=t.retries)
    if r.gpus:
        task.set_accelerator_type(r.accelerator).set_accelerator_limit(r.gpus)
    if r.train_shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=r.train_shm)
    if t.checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=t.checkpoint_pvc, mount_path=t.checkpoint_mount)
    return secret(task, settings.secrets.mlflow)


def _train_pytorchjob(settings: Any, common: dict, preprocessed: Any) -> dsl.PipelineTask:
    job = settings.pytorchjob
    task = network(limits(d.train_pytorchjob(preprocessed=preprocessed, **common), settings), settings)
    kubernetes.mount_pvc(task, pvc_name=job.pvc, mount_path=job.mount_path)
    return task


def _stages(settings: Any, params_yaml: str, profile: str, min_auc_lower: float, min_sensitivity_lower: float,
            dicom: Any, manifest: Any, train_step: Any) -> Outputs:
    common = {"params_yaml": params_yaml, "profile": profile}
    validate = limits(c.validate(dicom=dicom, manifest=manifest, **common), settings)
    exclude = limits(c.exclude(manifest=manifest, index=validate.outputs["index"], **common), settings)
    split = limits(c.split(cohort=exclude.outputs["cohort"], **common), settings)
    preprocess = limits(c.preprocess(dicom=dicom, index=validate.outputs["index"],
                                      split_table=split.outputs["split_table"], **common), settings)
    train = train_step(common, preprocess.outputs["preprocessed"])
    evaluate = secret(limits(c.evaluate(model=train.outputs["model"], preprocessed=preprocess.outputs["preprocessed"],
                                          **common), settings), settings.secrets.mlflow)
    promote = network(limits(c.promote(model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                                         cohort=exclude.outputs["cohort"], min_auc_lower=min_auc_lower,
                                         min_sensitivity_lower=min_sensitivity_lower, **common), settings), settings)
    secret(promote, settings.secrets.mlflow)
    # Registering is a side effect with a moving reference (the current champion): never cached.
    promote.set_caching_options(False)
    return Outputs(cohort_metrics=split.outputs["cohort_metrics"], flow=split.outputs["flow"],
                   train_metrics=train.outputs["train_metrics"], model=train.outputs["model"],
                   metrics=evaluate.outputs["metrics"], roc=evaluate.outputs["roc"], report=evaluate.outputs["report"],
                   decision=promote.outputs["decision"], gate=promote.outputs["gate"])


def _fetch(settings: Any, cohort_repo: str, cohort_revision: str) -> dsl.PipelineTask:
    """``dvc get`` the cohort at the commit ``cohort_revision`` names when the run starts.

    The revision is resolved by a task that is never cached; the fetch is cached, keyed on
    the commit, so a scheduled run on ``main`` fetches again exactly when ``main`` moved.
    """
    resolve = network(limits(c.resolve_cohort_revision(repo_url=cohort_repo, revision=cohort_revision,
                                                         timeout_s=settings.submit.git_timeout_s), settings), settings)
    resolve.set_caching_options(False)
    fetch = network(limits(c.fetch_cohort(repo_url=cohort_repo, revision=resolve.output), settings), settings)
    return secret(fetch, settings.secrets.dvc_remote)


def covidnet(settings: Any) -> Any:
    """The pipeline on a DVC-versioned cohort; train in one pod over its GPUs."""
    nproc, ckpt = str(settings.train.nproc_per_node), settings.train.checkpoint_dir

    @dsl.pipeline(name="covidnet", description="COVIDNet on a DVC-versioned cohort: validate, exclude, split, "
                                               "preprocess, train (GPU), evaluate, promote in the MLflow registry.")
    def pipeline(params_yaml: str, cohort_repo: str, cohort_revision: str = "main", profile: str = "default",
                 min_auc_lower: float = -1.0, min_sensitivity_lower: float = -1.0, nproc_per_node: str = nproc,
                 checkpoint_dir: str = ckpt) -> Outputs:
        """Thresholds below 0 keep the params file's ``promote`` values; checkpoint_dir "" = no resume."""
        fetch = _fetch(settings, cohort_repo, cohort_revision)
        return _stages(settings, params_yaml, profile, min_auc_lower, min_sensitivity_lower, fetch.outputs["dicom"],
                       fetch.outputs["manifest"],
                       lambda common, pre: _train_in_pod(settings, common, pre, nproc_per_node, checkpoint_dir))

    return pipeline


def covidnet_synthetic(settings: Any) -> Any:
    """The pipeline on a SYNTHETIC cohort (the demo, and the local run)."""
    nproc, ckpt = str(settings.train.nproc_per_node), settings.train.checkpoint_dir

    @dsl.pipeline(name="covidnet-synthetic", description="COVIDNet on a SYNTHETIC cohort (demo): synth, validate, "
                                                         "exclude, split, preprocess, train, evaluate, promote.")
    def pipeline(params_yaml: str, profile: str = "default", min_auc_lower: float = -1.0,
                 min_sensitivity_lower: float = -1.0, nproc_per_node: str = nproc, checkpoint_dir: str = ckpt) -> Outputs:
        """Thresholds below 0 keep the params file's ``promote`` values; checkpoint_dir "" = no resume."""
        synth = limits(c.synth(params_yaml=params_yaml, profile=profile), settings)
        return _stages(settings, params_yaml, profile, min_auc_lower, min_sensitivity_lower, synth.outputs["dicom"],
                       synth.outputs["manifest"],
                       lambda common, pre: _train_in_pod(settings, common, pre, nproc_per_node, checkpoint_dir))

    return pipeline


def covidnet_pytorchjob(settings: Any) -> Any:
    """The pipeline on a DVC-versioned cohort; train as a PyTorchJob across nodes (``pipeline.pytorchjob``)."""
    @dsl.pipeline(name="covidnet-pytorchjob", description="COVIDNet on a DVC-versioned cohort, trained across nodes "
                                                          "as a Kubeflow Training Operator PyTorchJob.")
    def pipeline(params_yaml: str, cohort_repo: str, cohort_revision: str = "main", profile: str = "default",
                 min_auc_lower: float = -1.0, min_sensitivity_lower: float = -1.0) -> Outputs:
        """Nodes, GPUs and resources of the job come from params_yaml's ``pipeline.pytorchjob``."""
        fetch = _fetch(settings, cohort_repo, cohort_revision)
        return _stages(settings, params_yaml, profile, min_auc_lower, min_sensitivity_lower, fetch.outputs["dicom"],
                       fetch.outputs["manifest"], lambda common, pre: _train_pytorchjob(settings, common, pre))

    return pipeline
