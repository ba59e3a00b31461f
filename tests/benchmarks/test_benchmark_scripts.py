"""The benchmark scripts of issue 15 run end to end at tiny sizes and print the JSON they document.

No timing is asserted (DESIGN.md §8): only that each script runs its every section without an
error, and that what it checks (tensors equal across transfer syntaxes, the GPU fast paths'
agreement) holds. ``gpu_all.py --dry-run`` runs the GPU script's code on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import REPO

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _errors(node, path="") -> list[str]:
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in _errors(v, f"{path}/{k}")]
    return []


def test_gpu_all_dry_run_runs_every_section(tmp_path):
    out = _run("gpu_all.py", "--dry-run", "--out", str(tmp_path / "gpu.json"))
    assert out["dry_run"] is True
    assert set(out["sections"]) == {"infer", "monai", "train", "serve", "compile"}
    assert not _errors(out), _errors(out)
    infer = out["sections"]["infer"]
    for name, opts in infer.items():
        if isinstance(opts, dict) and "options" in opts:
            assert isinstance(opts["batch2"]["agrees"], bool)
    # on the CPU the bf16/fp16 weights stay fp32 (bf16 autocast is real there, and its agreement is not asserted)
    for name in ("eager_fp32", "bf16w_cl_ss"):
        assert infer[name]["batch2"]["agrees"] and infer[name]["batch1"]["agrees"], (name, infer[name])
    assert "skipped" in infer["bf16w_cl_ss_graph"] or "batch2" in infer["bf16w_cl_ss_graph"]
    train = out["sections"]["train"]
    assert train["loop"]["epochs_run"] == 3 and len(train["loop"]["epoch_s"]) == 2  # read from the loop's log lines
    assert train["fast_loop"]["checkpoint_ok"] and len(train["fast_loop"]["history"]) == 3
    serve = out["sections"]["serve"]
    assert serve["probability_diff"] < 1e-3
    assert set(out["goals"]) >= {"inference_ms_per_volume_batch8", "training_loop_over_bare", "serving_c1_p50_s"}
    assert json.loads((tmp_path / "gpu.json").read_text())["goals"] == out["goals"]


def test_preprocess_benchmark_every_syntax_gives_the_same_tensor(tmp_path):
    out = _run("preprocess.py", "--matrix", "48", "--slices", "20", "--depth", "8", "--size", "48", "--crop", "32",
               "--repeats", "1", "--out", str(tmp_path / "p.json"))
    assert set(out["syntaxes"]) == {"none", "rle", "jpeg_ls", "jpeg2000", "jpeg_lossless"}
    for syntax, r in out["syntaxes"].items():
        assert r["equal_to_uncompressed_tensor"], (syntax, r["max_abs_diff_from_uncompressed_tensor"])
        assert r["max_abs_diff_from_monai"] < 1e-3, syntax
        assert r["floor_s"] > 0 and r["fastest_decoder"] in r["floor_decoders_s"]


def test_preprocess_stage_benchmark_on_the_tiny_cohort(tmp_path):
    out = _run("preprocess_stage.py", "--profile", "tiny", "--repeats", "1", "--out", str(tmp_path / "s.json"))
    assert out["cohort"]["scans"] > 0
    assert set(out["stage"]) == {"1:1", "1", "2"}
    assert out["monai"]["max_abs_diff_float32"] < 1e-5, out["monai"]
    assert out["monai"]["max_abs_diff_as_stored"] <= 2.0 ** -11, out["monai"]  # one float16 step below 1
