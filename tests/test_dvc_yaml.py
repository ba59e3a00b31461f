"""dvc.yaml's stages are complete: their code deps cover what each stage runs, their params exist.

A stage's code is the import closure (lazy imports included) of the module of its stage
function; every module of it must be a dep of the stage, as a file or inside a folder dep, so
that editing any code a stage runs makes ``dvc repro`` re-run it.
"""

import ast
from pathlib import Path

import pytest
import yaml

from support import REPO

SRC = REPO / "src" / "covidnet"
#: The module holding each dvc.yaml stage's function (what `covidnet STAGE` calls).
STAGE_MODULES = {"synth": "covidnet.synthetic.synth", "validate": "covidnet.validate.stage",
                 "exclude": "covidnet.data.exclude", "split": "covidnet.data.split",
                 "preprocess": "covidnet.preprocess.stage", "train": "covidnet.train.stage",
                 "evaluate": "covidnet.evaluate.stage", "promote": "covidnet.promote.stage"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in SRC.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("covidnet"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("covidnet")}
    return {m for m in found if m in modules}


def closure(entry: str) -> set[Path]:
    modules = _modules()
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imports(modules[name], modules)
    return {modules[m] for m in seen if modules[m].name != "__init__.py"}


@pytest.fixture(scope="module")
def stages():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_is_checked(stages):
    assert set(stages) == set(STAGE_MODULES)


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_code_deps_cover_the_import_closure(stages, stage):
    deps = [REPO / d for d in stages[stage]["deps"] if not d.startswith("${")]
    assert all(d.exists() for d in deps), [str(d) for d in deps if not d.exists()]
    missing = sorted(str(m.relative_to(REPO)) for m in closure(STAGE_MODULES[stage])
                     if not any(m == d or d in m.parents for d in deps))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not list as deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_params_keys_exist(stages, stage):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in stages[stage]["params"]:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml stage {stage}: params key {key!r} not in params.yaml"
            node = node[part]
