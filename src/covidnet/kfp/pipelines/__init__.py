"""The Kubeflow pipelines, built from the `pipeline` section of params."""
