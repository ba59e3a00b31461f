"""The Kubeflow Pipelines adapter: components, pipelines, compile/run/submit, PyTorchJob."""
