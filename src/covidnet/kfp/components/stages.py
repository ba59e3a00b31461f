"""One KFP v2 lightweight component per stage, each a thin typed wrapper over the stage's ``run_*`` function.

Every component runs in the project image (``pipeline.image.cpu`` of params, built from
``Dockerfile``; the train task in ``pipeline.image.cuda``, from ``Dockerfile.cuda``), which
holds ``covidnet`` and kfp, so nothing is pip-installed at run time. A component receives
the params file as text (``params_yaml``) and a ``profile``, maps its input and output artifacts onto
:class:`covidnet.paths.Paths` fields and calls the matching ``run_*`` function. Imports are
inside the bodies (KFP ships only each function's source).

A failing stage raises ``StageFailed`` ("<stage> failed: <why>") and removes whatever it had
written to its outputs (:func:`covidnet.kfp.runner.stage_failure`), so a failed run leaves no
partial artifact and says which stage failed and why.

Artifacts are folders where the stage writes a folder (DICOM tree, index, cohort, tensors,
model, evaluation) and files where it writes a file (split table, decision record).
"""


from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kfp import dsl

#: The image of a component used on its own, outside this package's pipelines (``base_image``
#: below). The pipelines set every task's image from params, ``pipeline.image`` (the one place the
#: images are named; :mod:`covidnet.kfp.pipelines.covidnet`), so the compiled YAML names what
#: ``scripts/images.sh`` built and tested; these two only mirror the default params' values
#: (tests/e2e/test_containers.py checks that they agree).
IMAGE = "covidnet:0.1.0"
#: The CUDA variant of :data:`IMAGE` (``Dockerfile.cuda``), for train: ``pipeline.image.cuda``.
CUDA_IMAGE = "covidnet:0.1.0-cuda"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_cohort_revision(repo_url: str, revision: str, timeout_s: int = 30) -> str:
    """The commit (40 hex digits) that a branch, tag or hash of the cohort repository names now.

    Never cached: it runs at every run, so a moving revision (``main``) is read afresh and the
    cached ``fetch_cohort`` behind it is reused only for the same commit.
    """
    from covidnet.data.fetch import resolve_revision
    from covidnet.kfp.runner import stage_failure

    with stage_failure("resolve_cohort_revision"):
        commit = resolve_revision(repo_url, revision, timeout_s=timeout_s)
    print(f"cohort revision {revision!r} of {repo_url} is commit {commit}")
    return commit


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_cohort(repo_url: str, revision: str, dicom: Output[Dataset], manifest: Output[Dataset],
                 dicom_path: str = "data/raw/dicom", manifest_path: str = "data/raw/manifest"):
    """``dvc get`` the DICOM tree and manifest at a git revision of a DVC repository.

    The DVC remote's credentials come from the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``; on a cluster from the ``pipeline.secrets.dvc_remote`` secret).
    """
    from covidnet.data.fetch import fetch_cohort as fetch
    from covidnet.kfp.runner import stage_failure

    with stage_failure("fetch_cohort", dicom.path, manifest.path):
        fetch(repo_url, revision, {dicom_path: dicom.path, manifest_path: manifest.path})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def synth(params_yaml: str, profile: str, dicom: Output[Dataset], manifest: Output[Dataset]):
    """Write the SYNTHETIC cohort (DICOM tree + manifest); stands in for fetch_cohort in demos."""
    from covidnet.kfp.runner import stage_failure, stage_params
    from covidnet.paths import Paths
    from covidnet.synthetic.synth import run_synth

    with stage_failure("synth", dicom.path, manifest.path):
        params = stage_params(params_yaml, profile)
        run_synth(params, Paths.from_params(params, dicom=dicom.path, manifest=manifest.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(params_yaml: str, profile: str, dicom: Input[Dataset], manifest: Input[Dataset],
             index: Output[Dataset], validation: Output[Dataset]):
    """Index the DICOM tree and validate it (Great Expectations); fails listing every broken expectation."""
    from covidnet.kfp.runner import stage_failure, stage_params
    from covidnet.paths import Paths
    from covidnet.validate.stage import run_validate

    with stage_failure("validate", index.path, validation.path):
        params = stage_params(params_yaml, profile)
        result = run_validate(params, Paths.from_params(params, dicom=dicom.path, manifest=manifest.path,
                                                        index=index.path, validation=validation.path),
                              progress=False)
        if not result.ok:
            raise ValueError(f"the cohort broke expectations:\n{result.report.format()}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exclude(params_yaml: str, profile: str, manifest: Input[Dataset], index: Input[Dataset],
            cohort: Output[Dataset]):
    """Apply the exclusion criteria (cohort.csv, exclusions.csv, flow.json)."""
    from covidnet.data.exclude import run_exclude
    from covidnet.kfp.runner import stage_failure, stage_params
    from covidnet.paths import Paths

    with stage_failure("exclude", cohort.path):
        params = stage_params(params_yaml, profile)
        run_exclude(params, Paths.from_params(params, manifest=manifest.path, index=index.path, cohort=cohort.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split(params_yaml: str, profile: str, cohort: Input[Dataset], split_table: Output[Dataset],
          flow: Output[Markdown], cohort_metrics: Output[Metrics]):
    """Split by patient; the flow diagram (the paper's Fig. 1) as Markdown, cohort counts as metrics."""
    import shutil
    import tempfile
    from pathlib import Path

    from covidnet.data.split import run_split
    from covidnet.kfp.runner import log_metrics, stage_failure, stage_params
    from covidnet.paths import Paths

    with stage_failure("split", split_table.path, flow.path, cohort_metrics.path):
        params = stage_params(params_yaml, profile)
        with tempfile.TemporaryDirectory() as tmp:
            paths = Paths.from_params(params, cohort=cohort.path, split=split_table.path, flow=Path(tmp) / "flow",
                                      metrics=cohort_metrics.path)
            run_split(params, paths)
            shutil.copyfile(paths.flow / "flow.md", flow.path)
        log_metrics(cohort_metrics, cohort_metrics.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(params_yaml: str, profile: str, dicom: Input[Dataset], index: Input[Dataset],
               split_table: Input[Dataset], preprocessed: Output[Dataset]):
    """Preprocess every scan of the split to tensors (tensors/, index.csv, qc.csv)."""
    from covidnet.kfp.runner import stage_failure, stage_params
    from covidnet.paths import Paths
    from covidnet.preprocess.stage import run_preprocess

    with stage_failure("preprocess", preprocessed.path):
        params = stage_params(params_yaml, profile)
        summary = run_preprocess(params, Paths.from_params(params, dicom=dicom.path, index=index.path,
                                                           split=split_table.path, preprocessed=preprocessed.path),
                                 progress=False)
        if summary.n_failed:
            raise ValueError(f"{summary.n_failed} scan(s) failed to preprocess (see their qc.csv rows)")


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train(params_yaml: str, profile: str, preprocessed: Input[Dataset], model: Output[Model],
          train_report: Output[Dataset], train_metrics: Output[Metrics], nproc_per_node: str = "auto",
          checkpoint_dir: str = ""):
    """Train with every GPU of the pod (torchrun when more than one) and track the run in MLflow.

    ``nproc_per_node``: ``auto`` (one process per visible GPU, one on a CPU) or a count.
    ``checkpoint_dir``: ``""`` starts afresh on every try; a folder of the pod (a mounted PVC)
    keeps checkpoints there, so a retried task resumes after its last finished epoch.
    """
    from pathlib import Path

    from covidnet.kfp.params import pipeline_params
    from covidnet.kfp.runner import log_metrics, stage_failure, stage_params
    from covidnet.paths import Paths
    from covidnet.train.launch import train_in_pod

    with stage_failure("train", model.path, train_report.path, train_metrics.path):
        params = stage_params(params_yaml, profile)
        result = train_in_pod(params, params_yaml, Paths.from_params(params, preprocessed=preprocessed.path,
                                                                     model=model.path, train_report=train_report.path),
                              nproc_per_node=nproc_per_node, checkpoint_dir=checkpoint_dir,
                              sync_s=pipeline_params(params).train.checkpoint_sync_s)
        model.metadata["mlflow_run_id"] = result.run_id
        model.metadata["processes"] = result.processes
        log_metrics(train_metrics, Path(train_report.path) / "metrics.json")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(params_yaml: str, profile: str, model: Input[Model], preprocessed: Input[Dataset],
             evaluation: Output[Dataset], calibrator: Output[Model], metrics: Output[Metrics],
             roc: Output[ClassificationMetrics], report: Output[HTML]):
    """Test and external figures with bootstrap CIs; ROC and confusion matrix of the test set; the HTML report."""
    import shutil
    from pathlib import Path

    from covidnet.evaluate.stage import run_evaluate
    from covidnet.kfp.runner import log_classification, log_metrics, stage_failure, stage_params
    from covidnet.paths import Paths

    with stage_failure("evaluate", evaluation.path, calibrator.path, metrics.path, roc.path, report.path):
        params = stage_params(params_yaml, profile)
        run_evaluate(params, Paths.from_params(params, model=model.path, preprocessed=preprocessed.path,
                                               evaluation=evaluation.path, calibrator=calibrator.path),
                     run_id=model.metadata.get("mlflow_run_id"))
        out = Path(evaluation.path)
        log_metrics(metrics, out / "metrics.json")
        log_classification(roc, out / "test")
        shutil.copyfile(out / "test" / "report.html", report.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(params_yaml: str, profile: str, model: Input[Model], evaluation: Input[Dataset],
            cohort: Input[Dataset], decision: Output[Dataset], gate: Output[Metrics],
            min_auc_lower: float = -1.0, min_sensitivity_lower: float = -1.0) -> str:
    """Register the model in MLflow and apply the gate here (not with dsl.If); returns the alias set.

    A threshold below 0 keeps the params file's value. A failed gate is not an error (alias
    ``challenger``); a registry that cannot be reached is (the task is retried).
    """
    from covidnet.kfp.runner import stage_failure, stage_params
    from covidnet.paths import Paths
    from covidnet.promote.stage import run_promote

    with stage_failure("promote", decision.path, gate.path):
        thresholds = {"min_auc_lower": min_auc_lower, "min_sensitivity_lower": min_sensitivity_lower}
        params = stage_params(params_yaml, profile, {"promote": {k: v for k, v in thresholds.items() if v >= 0}})
        result = run_promote(params, Paths.from_params(params, model=model.path, evaluation=evaluation.path,
                                                       cohort=cohort.path, decision=decision.path),
                             run_id=model.metadata.get("mlflow_run_id"))
        gate.log_metric("promoted", 1.0 if result.promoted else 0.0)
        gate.log_metric("version", float(result.version))
        for rule in result.rules:
            if rule.value is not None:
                gate.log_metric(f"{rule.name}", float(rule.value))
    return "champion" if result.promoted else "challenger"
