"""What `ray job submit --working-dir .` uploads, and what ray_cluster_stock_images.yaml syncs to nodes:
the repository's files, never the folders the README's commands fill with data.

The package is built with Ray's own functions, as Ray 2.60's job client builds it
(dashboard/modules/dashboard_sdk.py, SubmissionClient._upload_working_dir_if_needed: runtime_env/
working_dir.py's upload_working_dir_if_needed, then packaging.py's create_package), from a copy of the
repository's tracked files with a file of Ray's upload limit in each output folder. No cluster: only
the upload itself (an HTTP PUT of that zip) is left out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package
from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

ROOT = Path(__file__).resolve().parent.parent
# Every folder the README, the jobs' docstrings and scripts/run.sh write into the repository
# (outputs/ is the jobs' and run.sh's default; raw/ and shards/ the Kaggle example; runs/ the tuning
# example; preds/ the prediction example), and the prediction example's input images (my_images/).
DATA_FOLDERS = ("outputs", "raw", "shards", "runs", "preds", "my_images")


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sorted(name for name in listed.decode().split("\0") if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A clean checkout of the repository, then data where the README's commands put it: in each folder
    a file as large as Ray accepts, and a nested one."""
    copy = tmp_path_factory.mktemp("repository")
    for name in tracked_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for folder in DATA_FOLDERS:
        (copy / folder / "nested" / "part-00000.parquet").parent.mkdir(parents=True)
        (copy / folder / "nested" / "part-00000.parquet").write_bytes(b"PAR1")
        with open(copy / folder / "large.bin", "wb") as large:   # sparse: costs no disk, unless read
            large.truncate(GCS_STORAGE_MAX_SIZE)
    return copy


def uploaded(working_dir: Path, tmp_path: Path, include_gitignore: bool) -> list[str]:
    """The files of the package `ray job submit --working-dir <working_dir>` would upload: Ray's job client
    reads .gitignore unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 (include_gitignore False)."""
    packages = []

    def build_instead_of_upload(path, excludes, is_file=False):    # SubmissionClient._upload_package, no PUT
        assert not is_file
        package = tmp_path / f"package-{len(packages)}.zip"
        create_package(path, package, include_gitignore=include_gitignore, excludes=excludes)
        packages.append(package)

    upload_working_dir_if_needed({"working_dir": str(working_dir)}, include_gitignore=include_gitignore,
                                 upload_fn=build_instead_of_upload)
    [package] = packages
    with zipfile.ZipFile(package) as archive:
        return sorted(name for name in archive.namelist() if not name.endswith("/"))


@pytest.mark.parametrize("include_gitignore", [True, False], ids=["default", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1"])
def test_job_upload_is_the_repository_without_its_data_folders(repository, tmp_path, include_gitignore):
    files = uploaded(repository, tmp_path, include_gitignore)
    assert not [name for name in files if name.split("/", 1)[0] in DATA_FOLDERS]
    assert files == tracked_files(), "the upload lost or gained a file of the repository"


def test_ignore_files_list_every_data_folder():
    """The node sync of ray_cluster_stock_images.yaml reads .gitignore (rsync_filter) and names them too."""
    for ignore_file in (".gitignore", ".rayignore"):
        lines = (ROOT / ignore_file).read_text().splitlines()
        assert {f"/{folder}/" for folder in DATA_FOLDERS} <= set(lines), ignore_file
    stock = yaml.safe_load((ROOT / "ray_cluster_stock_images.yaml").read_text())
    assert ".gitignore" in stock["rsync_filter"]
    assert {f"/{folder}" for folder in DATA_FOLDERS} <= set(stock["rsync_exclude"])
    assert {".venv", ".git"} <= set(stock["rsync_exclude"])


def test_documented_job_submissions_upload_the_repository_root():
    """Every `ray job submit` the docs show uploads `.` with no runtime_env of its own: the ignore files
    above are what keeps data out; or it runs the `cxr` installed on the nodes, and uploads nothing.
    (The RayJob manifests upload nothing: tests/test_kuberay.py.)"""
    documents = [ROOT / "README.md", *sorted((ROOT / "jobs").glob("*.py")), ROOT / "ray_cluster.yaml",
                 ROOT / "ray_cluster_stock_images.yaml"]
    submissions = [(path.name, match) for path in documents
                   for match in re.findall(r"ray job submit -[^\n`]*", path.read_text().replace("\\\n", " "))]
    assert submissions
    for name, command in submissions:
        uploads_the_repository = re.search(r"--working-dir \.(\s|$)", command)
        runs_the_installed_command = re.search(r" -- cxr ", command) and "--working-dir" not in command
        assert uploads_the_repository or runs_the_installed_command, f"{name}: {command}"
        assert "--runtime-env" not in command, f"{name}: {command}"
