"""The COVIDNet pipeline: cohort -> validate -> exclude -> split -> preprocess -> train -> evaluate -> promote.

Two entry points share one wiring (:func:`_stages`):

- :func:`covidnet` (``covidnet_pipeline.yaml``): the first task ``dvc get``s the cohort (DICOM
  tree + manifest) at ``cohort_revision`` of the DVC repository ``cohort_repo``;
- :func:`covidnet_synthetic` (``covidnet_synthetic_pipeline.yaml``): the first task writes the
  synthetic cohort instead; what ``covidnet pipeline run --local`` runs.

The promotion gate is decided inside the promote component (``dsl.If`` is not evaluated by
``kfp.local``). Resources, the accelerator and retries apply on a cluster only.
"""


from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from components import stages as c

# Requests per task on a cluster (the paper profile needs the GPU and the large memory).
CPU_LIMIT = "2"
MEMORY_LIMIT = "8G"
TRAIN_CPU_LIMIT = "8"
TRAIN_MEMORY_LIMIT = "64G"
GPU = "nvidia.com/gpu"
RETRIES = 3
BACKOFF = "30s"

Outputs = NamedTuple("Outputs", [("cohort_metrics", Metrics), ("flow", Markdown), ("train_metrics", Metrics),
                                 ("model", Model), ("metrics", Metrics), ("roc", ClassificationMetrics),
                                 ("report", HTML), ("decision", Dataset), ("gate", Metrics)])


def _limits(task: dsl.PipelineTask, cpu: str = CPU_LIMIT, memory: str = MEMORY_LIMIT) -> dsl.PipelineTask:
    return task.set_cpu_limit(cpu).set_memory_limit(memory).set_caching_options(True)


def _network(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Tasks talking to a remote (DVC storage, MLflow registry): retried with exponential back-off."""
    return task.set_retry(num_retries=RETRIES, backoff_duration=BACKOFF, backoff_factor=2.0,
                          backoff_max_duration="600s")


def _stages(params_yaml: str, profile: str, min_auc_lower: float, min_sensitivity_lower: float,
            dicom: Any, manifest: Any) -> Outputs:
    common = {"params_yaml": params_yaml, "profile": profile}
    validate = _limits(c.validate(dicom=dicom, manifest=manifest, **common)).set_display_name("validate")
    exclude = _limits(c.exclude(manifest=manifest, index=validate.outputs["index"], **common))
    split = _limits(c.split(cohort=exclude.outputs["cohort"], **common))
    preprocess = _limits(c.preprocess(dicom=dicom, index=validate.outputs["index"],
                                      split_table=split.outputs["split_table"], **common))
    train = _limits(c.train(preprocessed=preprocess.outputs["preprocessed"], **common), TRAIN_CPU_LIMIT,
                    TRAIN_MEMORY_LIMIT)
    train.set_accelerator_type(GPU).set_accelerator_limit(1)
    evaluate = _limits(c.evaluate(model=train.outputs["model"], preprocessed=preprocess.outputs["preprocessed"],
                                  **common))
    promote = _network(_limits(c.promote(model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                                         cohort=exclude.outputs["cohort"], min_auc_lower=min_auc_lower,
                                         min_sensitivity_lower=min_sensitivity_lower, **common)))
    # Registering is a side effect with a moving reference (the current champion): never cached.
    promote.set_caching_options(False)
    return Outputs(cohort_metrics=split.outputs["cohort_metrics"], flow=split.outputs["flow"],
                   train_metrics=train.outputs["train_metrics"], model=train.outputs["model"],
                   metrics=evaluate.outputs["metrics"], roc=evaluate.outputs["roc"], report=evaluate.outputs["report"],
                   decision=promote.outputs["decision"], gate=promote.outputs["gate"])


@dsl.pipeline(name="covidnet", description="COVIDNet on a DVC-versioned cohort: validate, exclude, split, "
                                           "preprocess, train (GPU), evaluate, promote in the MLflow registry.")
def covidnet(params_yaml: str, cohort_repo: str, cohort_revision: str = "main", profile: str = "default",
             min_auc_lower: float = -1.0, min_sensitivity_lower: float = -1.0) -> Outputs:
    """Thresholds below 0 keep the params file's ``promote`` values."""
    fetch = _network(_limits(c.fetch_cohort(repo_url=cohort_repo, revision=cohort_revision)))
    return _stages(params_yaml, profile, min_auc_lower, min_sensitivity_lower, fetch.outputs["dicom"],
                   fetch.outputs["manifest"])


@dsl.pipeline(name="covidnet-synthetic", description="COVIDNet on a SYNTHETIC cohort (demo): synth, validate, "
                                                     "exclude, split, preprocess, train, evaluate, promote.")
def covidnet_synthetic(params_yaml: str, profile: str = "default", min_auc_lower: float = -1.0,
                       min_sensitivity_lower: float = -1.0) -> Outputs:
    """Thresholds below 0 keep the params file's ``promote`` values."""
    synth = _limits(c.synth(params_yaml=params_yaml, profile=profile))
    return _stages(params_yaml, profile, min_auc_lower, min_sensitivity_lower, synth.outputs["dicom"],
                   synth.outputs["manifest"])
