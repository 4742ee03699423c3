"""The installed `cxr` command: every job under one command, with the same options as its script
in jobs/; and the installation it comes from: dependencies as ranges, each pinned within its range."""

from __future__ import annotations

import argparse
import re

import pytest

from cxr.cli.command import JOBS
from cxr.cli.job import JOB_NAMES
from tests.cli import CXR_COMMAND, assert_one_line_error, run_cxr, run_job
from tests.conftest import REPO
from tests.pins import pinned_version, project_requirements

SCRIPTS = sorted(path.stem for path in (REPO / "jobs").glob("*.py"))


@pytest.fixture(scope="module")
def installed():
    """The console script, as `pip install .` (or the README's editable install) writes it."""
    if not CXR_COMMAND.is_file():
        pytest.fail(f"no {CXR_COMMAND}: install the project again (pip install -c constraints.txt -e '.[cpu,test]')")
    return CXR_COMMAND


def listed_options(help_text: str) -> set[str]:
    """The option strings an argparse --help lists, one option to a line (`  -h, --help  show ...`)."""
    found = set()
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            found |= {part.split()[0] for part in invocation.split(", ")}
    return found


def test_cxr_help_lists_every_job(installed):
    result = run_cxr("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\w+) +\S", result.stdout, re.MULTILINE)  # a job's name and its description
    assert listed == list(JOBS) == list(JOB_NAMES)  # a preset's sections are the jobs
    assert sorted(listed) == SCRIPTS, "a job without its script in jobs/, or a script cxr does not run"


def test_cxr_train_help_shows_the_training_options(installed):
    result = run_cxr("train", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cxr train ")
    assert {"--data", "--model", "--epochs", "--appearance-augment", "--workers", "--wait-timeout",
            "--verbose"} <= listed_options(result.stdout)
    assert "--trials" not in listed_options(result.stdout)  # tune's, not train's


@pytest.mark.parametrize("argv, message", [
    (["nosuchjob"], "invalid choice: 'nosuchjob' (choose from 'preprocess', 'train', 'tune', 'evaluate', 'predict')"),
    ([], "the following arguments are required: JOB"),
])
def test_no_such_job_is_one_line(installed, argv, message):
    result = run_cxr(*argv)
    assert_one_line_error(result, message)
    assert len(result.stderr.splitlines()) == 1 and not result.stdout


def test_a_jobs_bad_input_is_its_usual_one_line_error(installed, tmp_path):
    assert_one_line_error(run_cxr("preprocess", "--split", "0.5,0.5", "--output", str(tmp_path / "o")), "three")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("job", list(JOBS))
def test_a_job_takes_the_same_options_through_cxr_and_its_script(installed, job):
    parser = argparse.ArgumentParser()
    JOBS[job].add_arguments(parser)
    options = {option for action in parser._actions for option in action.option_strings}
    through_cxr, through_script = run_cxr(job, "--help"), run_job(job, "--help")
    for result in (through_cxr, through_script):
        assert result.returncode == 0, result.stderr
    assert listed_options(through_cxr.stdout) == listed_options(through_script.stdout) == options


def test_dependencies_are_ranges_and_constraints_pin_each_within_its_range():
    """cxr installs beside other packages; the README's setup, CI and the images install what was tested."""
    for requirement in project_requirements():
        operators = {specifier.operator for specifier in requirement.specifier}
        assert operators and not operators & {"==", "==="}, f"pyproject.toml pins {requirement}: give a range"
        assert operators & {"<", "<=", "~="}, f"pyproject.toml: {requirement} has no upper bound"
        pinned_version(requirement.name)


def test_the_setup_installs_the_pins_and_the_command():
    """scripts/bootstrap.sh (the README's setup, and CI's) installs the project with its pins, and as
    a project, which writes the console script: not --no-deps, not a requirements list."""
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    [install] = [line for line in bootstrap.splitlines() if re.search(r"pip install .*-e ", line)]
    assert '-c "$ROOT/constraints.txt"' in install and '-e "$ROOT[cpu,test]"' in install, install


@pytest.mark.slow
def test_cxr_preprocess_runs_outside_the_repository(installed, ray_session, tmp_path):
    """Where cxr is installed, the command runs anywhere: here from an empty folder, on the session's Ray."""
    address = ray_session.get_runtime_context().gcs_address
    output = tmp_path / "shards"
    result = run_cxr("preprocess", "--synthetic-images", "40", "--image-size", "64", "--output", str(output),
                     env={"RAY_ADDRESS": address}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"shards written to {output}" in result.stdout
    assert "inputs found 40 = kept" in result.stdout
    assert (output / "manifest.json").is_file()

