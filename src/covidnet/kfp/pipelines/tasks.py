"""What every pipeline task gets from the ``pipeline`` section of params: image, resources, retries, secrets."""

from typing import Any

from kfp import dsl, kubernetes


def limits(task: dsl.PipelineTask, settings: Any, train: bool = False) -> dsl.PipelineTask:
    """Every task: its image (``pipeline.image``: the CUDA one for train), requests, limits, caching."""
    r = settings.resources
    task.set_container_image(settings.image.cuda if train else settings.image.cpu)
    if train:
        task.set_cpu_request(r.train_cpu_request).set_memory_request(r.train_memory_request)
        task.set_cpu_limit(r.train_cpu).set_memory_limit(r.train_memory)
    else:
        task.set_cpu_request(r.cpu_request).set_memory_request(r.memory_request)
        task.set_cpu_limit(r.cpu).set_memory_limit(r.memory)
    return task.set_caching_options(True)


def network(task: dsl.PipelineTask, settings: Any, count: int | None = None) -> dsl.PipelineTask:
    """Tasks talking to a remote (DVC storage, MLflow registry, the Kubernetes API): retried with back-off.

    ``count`` replaces ``pipeline.retry.count`` (the train task's ``pipeline.train.retries``).
    """
    r = settings.retry
    return task.set_retry(num_retries=r.count if count is None else count, backoff_duration=f"{r.backoff_s}s",
                          backoff_factor=r.factor, backoff_max_duration=f"{r.max_backoff_s}s")


def secret(task: dsl.PipelineTask, secret: Any) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=dict(secret.env))
