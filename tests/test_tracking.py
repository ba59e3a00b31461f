
from covidnet.params import load_params
from covidnet.tracking import configure, flatten, mlflow_params
from support import REPO


def test_environment_overrides_the_store(monkeypatch):
    params = load_params(REPO / "params.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_params(params).tracking_uri == params["mlflow"]["tracking_uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert mlflow_params(params).tracking_uri == "http://tracking.example:5000"


def test_configure_follows_params_not_a_previous_set_tracking_uri(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI; configure must not pick that up later."""
    import mlflow

    from covidnet.tracking import MlflowParams

    a = MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'a.db'}", experiment="a", artifact_root=str(tmp_path / "a"),
                     registered_model="m")
    b = MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'b.db'}", experiment="b", artifact_root=str(tmp_path / "b"),
                     registered_model="m")
    configure(a)
    configure(b)
    assert mlflow.get_tracking_uri() == b.tracking_uri


def test_flatten():
    assert flatten("", {"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}
