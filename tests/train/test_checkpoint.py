"""Checkpoints: atomic writes, the settings compared before resuming, and resuming across settings that change nothing."""

import logging
import pickle

import pytest
import torch

import covidnet.train.loop as loop
from covidnet.train.checkpoint import LAST, NOT_COMPARED, config_diff, load_checkpoint, resume_state, save_checkpoint
from covidnet.train.loop import train_model
from covidnet.train.params import ResumeError, TrainPaths
from support.train import PRE, TINY, tiny_cohort, train_params, train_paths

CONFIG = {"model": {"growth_rate": 4, "block_config": [1, 1]}, "train": {"learning_rate": 0.001, "workers": 0},
          "preprocess": {"crop": 24}, "tensors_version": "sha256:x", "world_size": 1}


def _with(config: dict, section: str | None, key: str, value) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    (out[section] if section else out)[key] = value
    return out


def test_config_diff_names_nested_settings_and_skips_those_that_change_nothing():
    assert config_diff(CONFIG, CONFIG) == []
    assert NOT_COMPARED == {"world_size", "train.workers", "preprocess.workers"}
    assert config_diff(CONFIG, _with(_with(_with(CONFIG, None, "world_size", 4), "train", "workers", 8),
                                     "preprocess", "workers", 2)) == []
    other = _with(_with(CONFIG, "train", "learning_rate", 0.01), "model", "growth_rate", 8)
    assert config_diff(CONFIG, other) == ["model.growth_rate: checkpoint 4, now 8",
                                          "train.learning_rate: checkpoint 0.001, now 0.01"]
    assert config_diff(CONFIG, _with(CONFIG, "train", "augment", True)) == [
        "train.augment: checkpoint '<absent>', now True"]
    assert config_diff(CONFIG, _with(CONFIG, None, "world_size", 2), ignore=frozenset()) == [
        "world_size: checkpoint 1, now 2"]


def test_save_is_atomic_and_load_takes_plain_data(tmp_path):
    path = tmp_path / "ckpt" / LAST
    save_checkpoint({"epoch": 3, "w": torch.ones(2), "history": [{"epoch": 1}]}, path)
    save_checkpoint({"epoch": 4, "w": torch.zeros(2), "history": []}, path)
    assert [p.name for p in path.parent.iterdir()] == [LAST]  # no temporary file left beside it
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and torch.equal(state["w"], torch.zeros(2))
    torch.save({"bad": logging.getLogger("x")}, tmp_path / "object.pt")  # not tensors and containers
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path / "object.pt")


def test_resume_state_by_mode(tmp_path, caplog):
    path = tmp_path / LAST
    with pytest.raises(ResumeError, match="no checkpoint to resume from"):
        resume_state(path, CONFIG, "always")
    assert resume_state(path, CONFIG, "auto") is None
    save_checkpoint({"config": CONFIG, "epoch": 2}, path)
    assert resume_state(path, CONFIG, "never") is None
    assert resume_state(path, _with(CONFIG, "train", "workers", 2), "always")["epoch"] == 2
    other = _with(_with(CONFIG, "train", "learning_rate", 0.01), "train", "workers", 2)
    with pytest.raises(ResumeError, match=r"other settings:\n  train.learning_rate: checkpoint 0.001, now 0.01$"):
        resume_state(path, other, "always")
    with caplog.at_level(logging.WARNING):
        assert resume_state(path, other, "auto") is None
    assert "starting afresh" in caplog.text
    with pytest.raises(ValueError, match="resume must be auto, always or never, got 'sometimes'"):
        resume_state(path, CONFIG, "sometimes")


def test_resume_refuses_other_settings(tmp_path):
    index = tiny_cohort(tmp_path / "pre")
    paths = train_paths(tmp_path)
    train_model(index, paths, TINY, train_params(epochs=1), PRE, progress=False)
    with pytest.raises(ResumeError, match=r"train.learning_rate: checkpoint 0.001, now 0.01"):
        train_model(index, paths, TINY, train_params(epochs=2, learning_rate=1e-2), PRE, resume="always", progress=False)
    # auto: starts afresh instead
    r = train_model(index, paths, TINY, train_params(epochs=1, learning_rate=1e-2), PRE, resume="auto", progress=False)
    assert r.resumed_from == 0
    assert "world_size" in load_checkpoint(paths.checkpoints / "last.pt")["config"]


class _Killed(Exception):
    pass


def test_resume_with_another_worker_count_ends_identical(tmp_path, monkeypatch):
    """A checkpoint of workers=0 resumes under workers=1 (DataLoader processes change no sample)
    and ends with the weights of an uninterrupted run; a changed learning rate still refuses."""
    index = tiny_cohort(tmp_path / "pre")
    ref = TrainPaths(tmp_path / "pre", tmp_path / "ref/model", tmp_path / "ref/ckpt", tmp_path / "ref/report")
    train_model(index, ref, TINY, train_params(epochs=2), PRE, progress=False)

    def save_then_die(obj, path):  # the process dies right after its first epoch's checkpoint
        save_checkpoint(obj, path)
        if path.name == LAST:
            raise _Killed

    paths = train_paths(tmp_path)
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_model(index, paths, TINY, train_params(epochs=2), PRE, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(paths.checkpoints / LAST)["epoch"] == 1

    with pytest.raises(ResumeError, match="train.learning_rate: checkpoint 0.001, now 0.01") as refused:
        train_model(index, paths, TINY, train_params(epochs=2, workers=1, learning_rate=1e-2), PRE, resume="always",
                    progress=False)
    assert "workers" not in str(refused.value)
    r = train_model(index, paths, TINY, train_params(epochs=2, workers=1), PRE, resume="always", progress=False)
    assert r.resumed_from == 1 and r.epochs_run == 2
    a, b = load_checkpoint(ref.checkpoints / LAST), load_checkpoint(paths.checkpoints / LAST)
    assert b["config"]["train"]["workers"] == 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=0, rtol=0)
    assert a["history"] == b["history"]
