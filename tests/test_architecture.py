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
# Packages of shared modules, beside the stages: every job's config, one module per job.
SHARED_PACKAGES = {"config"}


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
    assert {p.name for p in (ROOT / "cxr").iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        set(STAGE_RANKS) | SHARED_PACKAGES
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


# --- each setting in one place: the config's fields, which the parsers are built from ----------


def _parser_flags(job) -> dict[str, str]:
    """Every option string of a job's parser and the dest it sets (cxr.cli.job: a setting's
    dotted name, or '<setting> <flag>' for a shorthand)."""
    import argparse

    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return {string: action.dest for action in parser._actions for string in action.option_strings}


def _as_flags(job, config) -> list[str]:
    """The command line that says `config`, setting by setting, through each setting's own flag."""
    from cxr.options import is_config, leaves

    argv = []
    for setting in leaves(job.config):
        value = config
        for part in setting.name.split("."):
            value = getattr(value, part)
        flag = setting.option.flag
        if not flag or is_config(setting.type) or value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif setting.option.repeat:
            argv += [part for each in value for part in (flag, "=".join(each) if isinstance(each, tuple) else each)]
        elif isinstance(value, tuple):
            # --classes all: every class folder
            argv += [flag, ",".join(value) if value or setting.name != "classes" else "all"]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


@pytest.mark.parametrize("name", ["preprocess", "train", "tune", "evaluate", "predict"])
def test_every_flag_is_a_setting_of_the_jobs_config_and_every_setting_with_a_flag_is_in_its_parser(name):
    from cxr.cli.command import JOBS
    from cxr.options import leaves

    job = JOBS[name]
    flags = _parser_flags(job)
    settings = {setting.name: setting for setting in leaves(job.config)}
    # parser -> config: a flag sets one setting, or several through a shorthand of a nested config.
    for string, dest in flags.items():
        if string in ("-h", "--help", "--config", "--verbose"):
            continue
        setting = dest.split(" ")[0]
        assert setting in settings, f"{name}: {string} sets {dest!r}, which is not a setting of {job.config.__name__}"
        option = settings[setting].option
        assert string in {option.flag, "--no-" + (option.flag or "").removeprefix("--"),
                          *(shorthand.flag for shorthand in option.shorthands)}, f"{name}: {string} -> {dest}"
    # config -> parser: every setting with a flag has it, with help.
    for setting in settings.values():
        if setting.option.flag:
            assert flags.get(setting.option.flag) == setting.name, f"{name}: no {setting.option.flag} in the parser"
            assert setting.option.help, f"{name}: {setting.option.flag} has no help"


@pytest.mark.parametrize("name", ["preprocess", "train", "tune", "evaluate", "predict"])
def test_a_config_said_flag_by_flag_parses_back_to_itself(name, tmp_path):
    """Every flag reaches its own setting: the defaults and each preset, written out as flags,
    build the same config again."""
    from cxr.cli.command import JOBS
    from cxr.cli.job import preset_names

    job = JOBS[name]
    required = {"evaluate": ["--run", "r"], "predict": ["--model", "m", "--input", "i", "--output", "o"]}.get(name, [])
    configs = [job.build_config(job.parse_args(required))]
    for preset in preset_names():
        if name in ("preprocess", "train", "tune"):
            configs.append(job.build_config(job.parse_args(["--config", preset, *required])))
    for config in configs:
        assert job.build_config(job.parse_args(_as_flags(job, config))) == config


def test_copied_constants_agree():
    """Constants kept twice so that a module stands alone, pinned to each other here."""
    from cxr.config import MAX_SYNTHETIC_SOURCES
    from cxr.evaluate.shortcuts import LUNG_ELLIPSES
    from cxr.ingest.synthetic import SITES
    from cxr.preprocess.lungs import PRIOR_ELLIPSES

    assert MAX_SYNTHETIC_SOURCES == len(SITES)
    assert PRIOR_ELLIPSES == LUNG_ELLIPSES


def test_resume_checks_read_which_settings_define_a_run_from_the_config():
    from cxr.config import TrainConfig
    from cxr.options import leaves
    from cxr.train import settings as train_settings
    from cxr.tune import settings as tune_settings

    executing = {setting.name for setting in leaves(TrainConfig) if not setting.option.defines_run}
    assert set(train_settings.EXECUTION_SETTINGS) == executing
    assert {"workers", "gpu", "data", "storage", "name", "wait_timeout", "mlflow"} <= executing
    assert not executing & {"epochs", "learning_rate", "seed", "model", "batch_size"}
    assert set(tune_settings.SEARCH_SETTINGS) == {"trials", "space", "metric", "grace_period", "reduction_factor",
                                                  "searcher", "max_concurrent"}
    assert train_settings.flag("augment.zoom") == "--augment-zoom" and train_settings.flag("manifest") == "--data"
    assert tune_settings._change("trials", 4, 8) == "the sweep was started with --trials 4, not 8"
