"""The benchmarks are guarded: each one runs end to end in its `--smoke` mode (tiny generated
data, nothing written into docs/), and each imports only benchmarks/common.py and public
names of cxr, so that no benchmark breaks when another one, or a private function, changes."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# What each benchmark's smoke run must print: a row of its results table with numbers it
# computed, so that a script that exits 0 without measuring anything still fails.
PRINTED = {
    "dicom": r"\| DICOM RLE lossless \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \|",
    "download": r"\| per file, 2 in flight \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \|",
    "generalization": r"\| class = source \| `[^`|]+` \| \d+ / \d+ / \d+ \| [\d.]+ \| \d\.\d{3} \| \d\.\d{3} \|",
    "near_duplicates": r"\| 24 \| \d+ \| \d+ \| \d+ \| \d+ \| \d+ \|",
    "predict": r"\| Ray Data scoring pipeline, 1 actor\(s\) \| \d+ \| \d+ \(fixed cost [\d.]+ s\) \|",
    "preprocess": r"\| images/s \| [\d.]+ \| [\d.]+ \|",
    "quality": r"\| no dropout \| \d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\) \|",
    "quickstart": r"\| 0 \| [\d.]+ min \| \d+ \| \d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\) \|",
    "train": r"\| \*\*images/s, median of epochs 2-2\*\* \| \*\*[\d.]+\*\* \| \*\*[\d.]+\*\* \|",
    "tune": r"\| job defaults \| [\d.e-]+ \| \d\.\d\d \| \d+ \|",
    "worker_overhead": r"\*\*BFC / system images/s: \d+\.\d\d\*\*",
}
# What a run may write under docs/: a smoke run must leave all of it as it was.
DOCS_OUTPUTS = ("docs/benchmarks.md", "docs/benchmarks", "docs/near_duplicates.png")


def _scripts() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in ("common.py", "__init__.py"))


def test_every_benchmark_has_a_smoke_check():
    assert {p.stem for p in _scripts()} == set(PRINTED)


# ---------------------------------------------------------------- imports


def _violations(source: str) -> list[str]:
    """Imports of another benchmark than common, and uses of a private name (`_x`) of cxr or
    of a benchmark module: at the top of the file or inside a function."""
    found, modules = [], set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            package = node.module.split(".")[0]
            if package == "benchmarks":
                names = [node.module.removeprefix("benchmarks.")] if node.module != "benchmarks" else \
                    [alias.name for alias in node.names]
                found += [f"imports benchmarks.{name}" for name in names if name != "common"]
            if package in ("cxr", "benchmarks"):
                found += [f"imports {node.module}.{alias.name}" for alias in node.names if _private(alias.name)]
                found += [f"imports {node.module}" for part in node.module.split(".") if _private(part)]
                modules |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("cxr", "benchmarks"):
                    found += [f"imports {alias.name}" for part in alias.name.split(".") if _private(part)]
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):  # `fingerprints._distances(...)` after `from cxr.preprocess import fingerprints`
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and _private(node.attr):
            found.append(f"uses {node.value.id}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("path", _scripts() + [BENCHMARKS / "common.py"], ids=lambda p: p.stem)
def test_benchmarks_import_only_common_and_public_names(path):
    assert _violations(path.read_text()) == []


def test_the_import_rule_sees_sideways_imports_and_private_names():
    source = "\n".join([
        "from benchmarks import common, train",
        "from benchmarks.preprocess import spread",
        "from cxr.preprocess.fingerprints import _distances",
        "from cxr.preprocess import fingerprints",
        "import cxr._secret",
        "def f():",
        "    return fingerprints._distances(1, 2), common._read('x'), common.spread([], 1)",
    ])
    assert _violations(source) == [
        "imports benchmarks.train", "imports benchmarks.preprocess", "imports cxr.preprocess.fingerprints._distances",
        "imports cxr._secret", "uses fingerprints._distances", "uses common._read"]


# ---------------------------------------------------------------- smoke runs


def _docs_digest() -> str:
    digest = hashlib.sha256()
    for name in DOCS_OUTPUTS:
        path = ROOT / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(str(file).encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRINTED))
def test_benchmark_smoke_run_prints_its_results_and_writes_no_docs(name):
    before = _docs_digest()
    # The benchmarks start their own Ray (they measure it); the session's must not be named.
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert re.search(PRINTED[name], result.stdout), result.stdout[-5000:]
    assert _docs_digest() == before
