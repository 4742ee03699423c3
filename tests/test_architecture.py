"""The package's shape, as docs/architecture.md draws it: imports follow the data, and every
file name the jobs write is spelled in cxr/artifacts.py only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cxr import artifacts

ROOT = Path(__file__).resolve().parents[1]
# The stages in the data's order (evaluate and predict side by side, both over scoring);
# the shared modules at the top of cxr/ come before all, the command line (cli), which runs
# every stage, after all.
STAGE_RANKS = {"ingest": 1, "preprocess": 2, "train": 3, "tune": 4, "scoring": 5, "evaluate": 6, "predict": 6,
               "cli": 7}
# Imports across siblings that docs/architecture.md names: prediction applies the operating
# point the way evaluation chose it.
ALLOWED_SIBLING_IMPORTS = {("predict", "cxr.evaluate.metrics")}


def _modules() -> list[Path]:
    return sorted((ROOT / "cxr").rglob("*.py"))


def _rank(module: str) -> int:
    """0 for a shared module, its stage's rank for a stage package's module."""
    parts = module.split(".")
    return STAGE_RANKS[parts[1]] if len(parts) > 2 and parts[1] in STAGE_RANKS else 0


def _imports(path: Path) -> set[str]:
    """Every cxr module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cxr")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr"):
            # `from cxr import storage` and `from cxr.train import models` name modules.
            package = ROOT.joinpath(*node.module.split("."))
            found |= ({f"{node.module}.{alias.name}" for alias in node.names}
                      if package.is_dir() else {node.module})
    return found


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_the_stages_are_packages_and_every_module_has_a_place():
    assert {p.name for p in (ROOT / "cxr").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(STAGE_RANKS)
    assert len(_modules()) > 30


def _against_the_flow(module: str, imported: set[str]) -> list[str]:
    """The imports of `module` that come later in the data's flow, or from a sibling stage."""
    stage = module.split(".")[1] if _rank(module) else "shared"
    return sorted(name for name in imported
                  if (_rank(name) > _rank(module)
                      or (_rank(name) == _rank(module) > 0 and name.split(".")[1] != stage))
                  and (stage, name) not in ALLOWED_SIBLING_IMPORTS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_data(path):
    module = _name(path)
    against = _against_the_flow(module, _imports(path))
    assert not against, f"{module} imports {against}, against the data's flow (docs/architecture.md)"


def test_the_rule_sees_wrong_imports(tmp_path):
    copy = tmp_path / "models.py"
    copy.write_text((ROOT / "cxr" / "train" / "models.py").read_text() + "\nfrom cxr.evaluate import report\n")
    assert _against_the_flow("cxr.train.models", _imports(copy)) == ["cxr.evaluate.report"]
    assert _against_the_flow("cxr.storage", {"cxr.train.models", "cxr.errors"}) == ["cxr.train.models"]
    assert _against_the_flow("cxr.predict.job", {"cxr.evaluate.metrics", "cxr.scoring.export"}) == []
    assert _against_the_flow("cxr.predict.job", {"cxr.evaluate.report"}) == ["cxr.evaluate.report"]
    assert _against_the_flow("cxr.evaluate.job", {"cxr.predict.job"}) == ["cxr.predict.job"]
    assert _against_the_flow("cxr.cli.train", {"cxr.train.job", "cxr.cli.tune"}) == []
    assert _against_the_flow("cxr.runtime", {"cxr.cli.train"}) == ["cxr.cli.train"]


def _artifact_file_names() -> set[str]:
    """artifacts.py's file names (folder names such as "model" are common words in code)."""
    return {value for name, value in vars(artifacts).items()
            if re.fullmatch(r"[A-Z_]+_FILE", name) and isinstance(value, str)}


def test_file_names_are_spelled_in_artifacts_only():
    names = _artifact_file_names()
    assert {"manifest.json", "model.keras", "training.json", "learning_curve.png", "report.md"} <= names
    spelled = []
    for path in [*_modules(), *sorted((ROOT / "jobs").glob("*.py"))]:
        if path.name == "artifacts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, f"file names of cxr/artifacts.py spelled again: {spelled}"
