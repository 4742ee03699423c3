"""infra/kuberay and infra/Dockerfile agree with the project: the Ray that constraints.txt pins (within
pyproject.toml's range) and the Python that pyproject.toml requires, the `cxr` command the RayJobs
run (installed in the image, its parsers reading their entrypoints), the GPU pool training is pinned
to; no secrets.

No cluster and no Docker: the manifests are read as YAML, and the groups' Ray resources and node
labels are taken as the Ray autoscaler itself derives them from the RayCluster.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.pins import pinned_version

REPO = Path(__file__).resolve().parent.parent
KUBERAY = REPO / "infra" / "kuberay"
CLUSTER_FILE = KUBERAY / "raycluster.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

JOBS = ("preprocess", "train", "tune")    # each runs as infra/kuberay/rayjob-<job>.yaml
POOL = "cxr-pool"                 # the Ray node label that tells the GPU pool from the CPU pool
GPU = "nvidia.com/gpu"

SECRET_TEXT = [re.compile(pattern) for pattern in (
    r"aws_secret_access_key",
    r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S",
    r"KAGGLE_KEY",
    r"(?i)password",
    r"AKIA[0-9A-Z]{16}",                                     # an AWS access key id
    r"(?im)^\s*(ENV|ARG)\s+\w*(secret|key|token|password)",  # a Dockerfile baking one in
)]
SECRET_NAME = re.compile(r"(?i)secret|key|token|password")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def the_one(kind: str, path: Path) -> dict:
    found = [doc for doc in documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: {len(found)} {kind} documents, not one"
    return found[0]


def ray_cluster() -> dict:
    return the_one("RayCluster", CLUSTER_FILE)


def job_spec(job: str) -> dict:
    return the_one("RayJob", KUBERAY / f"rayjob-{job}.yaml")["spec"]


def groups(cluster: dict) -> dict[str, dict]:
    """The head group and the worker groups by the names the autoscaler gives them."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _HEAD_GROUP_NAME

    spec = cluster["spec"]
    return {_HEAD_GROUP_NAME: spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]    # KubeRay: the Ray container comes first


def pod_gpus(group: dict) -> int:
    return int(ray_container(group)["resources"].get("limits", {}).get(GPU, 0))


def autoscaler_view(cluster: dict) -> dict[str, dict]:
    """Each group's Ray resources (CPU, GPU) and node labels, as the autoscaler of this Ray reads them."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    with_namespace = {**cluster, "metadata": {"namespace": "default", **cluster["metadata"]}}
    return _derive_autoscaling_config_from_ray_cr(with_namespace)["available_node_types"]


def entrypoint_config(job: str):
    """The RayJob's entrypoint, `cxr <job> ARGS` (the command the image installs), read by the `cxr`
    command's own parser and the job's build_config (cxr/cli/<job>.py): (args, config)."""
    from cxr.cli.command import JOBS as COMMAND_JOBS, build_parser
    from cxr.errors import UserError

    argv = shlex.split(job_spec(job)["entrypoint"])
    assert argv[:2] == ["cxr", job], f"rayjob-{job}.yaml: the entrypoint is not `cxr {job} ...`: {argv[:2]}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv[1:])
    except UserError as error:      # the command's own one line
        pytest.fail(f"rayjob-{job}.yaml: cxr rejects the entrypoint: {error}")
    except SystemExit:              # the job's parser: argparse's one-line error, not its usage text
        pytest.fail(f"rayjob-{job}.yaml: cxr {job} rejects the entrypoint: "
                    f"{stderr.getvalue().strip().splitlines()[-1]}")
    assert args.job == job
    return args, COMMAND_JOBS[job].build_config(args)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_builds() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The Dockerfile's ARG defaults, and its documented `docker build` commands: tag -> build args."""
    text = DOCKERFILE.read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    comments = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    builds = {}
    for command in comments.replace("\\\n", " ").splitlines():
        if not command.startswith("docker build "):
            continue
        words, args, tag = shlex.split(command), dict(defaults), None
        for flag, value in zip(words, words[1:]):
            if flag == "-t":
                tag = value
            elif flag == "--build-arg":
                key, _, args[key] = value.partition("=")
        builds[tag] = args
    return defaults, builds


def test_manifests_are_kuberay_v1_resources():
    assert sorted((d["apiVersion"], d["kind"]) for d in documents(CLUSTER_FILE)) == [
        ("ray.io/v1", "RayCluster"), ("v1", "ServiceAccount"), ("v1", "ServiceAccount")]
    for job in JOBS:
        path = KUBERAY / f"rayjob-{job}.yaml"
        assert [(d["apiVersion"], d["kind"]) for d in documents(path)] == [("ray.io/v1", "RayJob")], path.name


def test_cluster_runs_the_pinned_ray_in_the_images_the_dockerfile_builds():
    cluster = ray_cluster()
    assert cluster["spec"]["rayVersion"] == pinned_version("ray")
    _, builds = dockerfile_builds()
    for name, group in groups(cluster).items():
        image = ray_container(group)["image"]
        assert image in builds, f"group {name}: {image} is none of the Dockerfile's tags {sorted(builds)}"
        assert builds[image]["CXR_EXTRA"] == ("gpu" if pod_gpus(group) else "cpu"), f"group {name}: {image}"


def test_dockerfile_builds_on_the_pinned_ray_and_python_with_one_tensorflow_extra():
    defaults, builds = dockerfile_builds()
    python = SpecifierSet(PROJECT["requires-python"])
    for tag, args in {"(defaults)": defaults, **builds}.items():
        # Ray's CPU image for both builds: the GPU build's CUDA comes with TensorFlow's wheels, and the
        # CUDA 12.1 toolkit of Ray's -gpu images would only add weight (see the Dockerfile).
        match = re.fullmatch(r"rayproject/ray:(?P<ray>[^-]+)-py(?P<major>\d)(?P<minor>\d+)-cpu", args["RAY_IMAGE"])
        assert match, f"{tag}: RAY_IMAGE={args['RAY_IMAGE']} is not an official CPU Ray image"
        assert match["ray"] == pinned_version("ray"), f"{tag}: RAY_IMAGE={args['RAY_IMAGE']}"
        assert Version(f"{match['major']}.{match['minor']}") in python, f"{tag}: RAY_IMAGE={args['RAY_IMAGE']}"
        assert args["CXR_EXTRA"] in PROJECT["optional-dependencies"], f"{tag}: CXR_EXTRA={args['CXR_EXTRA']}"
        assert tag == "(defaults)" or tag.endswith(f"-{args['CXR_EXTRA']}"), f"{tag}: CXR_EXTRA={args['CXR_EXTRA']}"
    assert {tag.rsplit(":", 1)[-1] for tag in builds} == {f"{PROJECT['version']}-{x}" for x in ("cpu", "gpu")}


def dockerfile_steps() -> list[tuple[str, str, str]]:
    """(instruction, its arguments, the working directory it runs in), in order."""
    workdir, steps = "/", []
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        steps.append((keyword, rest, workdir))
    return steps


def copied_files(steps) -> list[tuple[int, str, str]]:
    """(step index, path in the image, repository path) of every COPY."""
    copied = []
    for index, (keyword, rest, workdir) in enumerate(steps):
        if keyword != "COPY":
            continue
        *sources, dest = [word for word in rest.split() if not word.startswith("--")]
        dest = posixpath.join(workdir, dest)
        for source in sources:
            name = source.rstrip("/")
            assert (REPO / name).exists(), f"COPY {source}: not in the repository"
            into = (REPO / name).is_file() and dest.endswith("/")
            copied.append((index, posixpath.normpath(posixpath.join(dest, name) if into else dest), name))
    return copied


def pip_installs(steps) -> list[tuple[int, str, str]]:
    return [(index, rest, workdir) for index, (keyword, rest, workdir) in enumerate(steps)
            if keyword == "RUN" and "pip install" in rest]


def test_dockerfile_installs_dependencies_before_copying_code():
    """A code change must not reinstall TensorFlow and CUDA: the dependencies' layer comes first and is
    built from files that change only with the dependencies; the code is installed with --no-deps."""
    steps = dockerfile_steps()
    copied = copied_files(steps)
    packages = {name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    code = {*packages, "jobs"}
    first_code_copy = min(index for index, _, name in copied if name in code)
    installs = pip_installs(steps)
    dependencies = [(i, rest) for i, rest, _ in installs if i < first_code_copy]
    assert len(dependencies) == 1, "one pip install of the dependencies, before the code is copied"
    [(index, rest)] = dependencies
    assert {name for i, _, name in copied if i < index} == {"pyproject.toml", "constraints.txt", "constraints-gpu.txt"}
    for constraints in ("constraints.txt", "constraints-gpu.txt"):
        assert re.search(rf"(^|\s)-c {re.escape(constraints)}\s", rest), rest
    for i, rest, _ in installs:
        if i > first_code_copy:
            assert "--no-deps" in shlex.split(rest), f"a pip install after the code resolves dependencies: {rest}"


def test_dockerfile_dependency_list_is_pyprojects_for_the_extra(tmp_path):
    """The dependencies' RUN derives its requirements from pyproject.toml: run that very command."""
    _, builds = dockerfile_builds()
    [(_, rest, workdir)] = [step for step in pip_installs(dockerfile_steps()) if "-r " in step[1]]
    words = shlex.split(rest.split("&&")[0].split(">")[0].replace('"$CXR_EXTRA"', "EXTRA"))
    assert words[:2] == ["python", "-c"] and words[3:] == ["EXTRA"], words
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    for extra in {args["CXR_EXTRA"] for args in builds.values()}:
        listed = subprocess.run([sys.executable, "-c", words[2], extra], cwd=tmp_path, capture_output=True,
                                text=True, check=True).stdout.splitlines()
        # The extra's build, with MLflow's client for --mlflow.
        extras = PROJECT["optional-dependencies"]
        assert listed == PROJECT["dependencies"] + extras[extra] + extras["mlflow"]


def test_the_image_installs_the_cxr_command_the_rayjobs_run():
    """The entrypoints call `cxr`: pyproject.toml declares that console script and the image pip-installs
    the project itself, after its dependencies (pinned by the constraints), which writes it onto the
    image's PATH (see the Dockerfile)."""
    assert PYPROJECT["project"]["scripts"]["cxr"] == "cxr.cli.command:console_script"
    steps = dockerfile_steps()
    first_code_copy = min(index for index, _, name in copied_files(steps) if name == "cxr")
    project_installs = [shlex.split(rest) for index, rest, _ in pip_installs(steps)
                        if index > first_code_copy and "." in shlex.split(rest)]
    assert len(project_installs) == 1, "one pip install of the project (`.`) after its code is copied"


def test_dockerfile_puts_the_project_where_the_jobs_run():
    steps = dockerfile_steps()
    packages = {name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", "constraints.txt", "constraints-gpu.txt", PROJECT["readme"], *packages, "jobs"}
    copied = {path: name for _, path, name in copied_files(steps)}
    assert set(copied.values()) == needed
    workdir = steps[-1][2]
    assert {workdir} == {w for _, _, w in pip_installs(steps)}, "pip runs in the working directory the jobs run from"
    for name in needed:
        assert copied.get(posixpath.join(workdir, name)) == name, f"{name} is not in the working directory {workdir}"
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert all(f"!{name}" in dockerignore or f"!{name}/" in dockerignore for name in needed), "not in the build context"


def service_accounts() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents(CLUSTER_FILE) if doc.get("kind") == "ServiceAccount"}


def autoscaler_service_account(cluster: dict) -> str:
    """The account KubeRay binds its autoscaler Role to, as KubeRay v1.5.1 names it: the head template's
    serviceAccountName, else the cluster's name (ray-operator/controllers/ray/utils/util.go,
    GetHeadGroupServiceAccountName; common/rbac.go, BuildRoleBinding)."""
    return cluster["spec"]["headGroupSpec"]["template"]["spec"].get("serviceAccountName") or cluster["metadata"]["name"]


def mounts_api_token(pod: dict, accounts: dict[str, dict]) -> bool:
    """Kubernetes' rule: the pod's automountServiceAccountToken wins over its ServiceAccount's; default true."""
    if "automountServiceAccountToken" in pod:
        return pod["automountServiceAccountToken"]
    return accounts.get(pod.get("serviceAccountName", "default"), {}).get("automountServiceAccountToken", True)


def test_pods_reach_s3_through_irsa_with_a_memory_backed_object_store():
    accounts = service_accounts()
    for name, group in groups(ray_cluster()).items():
        pod = group["template"]["spec"]
        account = accounts.get(pod.get("serviceAccountName"))
        assert account, f"group {name}: runs as {pod.get('serviceAccountName')}, which this file does not define"
        assert "eks.amazonaws.com/role-arn" in account["metadata"].get("annotations", {}), name
        shm = [m["name"] for m in ray_container(group).get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        media = [v.get("emptyDir", {}).get("medium") for v in pod.get("volumes", []) if v["name"] in shm]
        assert media == ["Memory"], f"group {name}: /dev/shm is not a memory-backed emptyDir"


def test_no_worker_group_shares_the_heads_token():
    """The autoscaler's rights (patch pods, patch rayclusters) stay with the head's account: no worker pod
    runs as it, and none mounts a Kubernetes API token. IRSA needs no such token (its webhook mounts its own)."""
    cluster = ray_cluster()
    accounts = service_accounts()
    head_account = autoscaler_service_account(cluster)
    assert head_account in accounts, "KubeRay wants the head's named ServiceAccount to exist"
    for group in cluster["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert pod.get("serviceAccountName", "default") != head_account, group["groupName"]
        assert not mounts_api_token(pod, accounts), f"group {group['groupName']}: mounts a Kubernetes API token"
    # Nothing else in the file grants the workers' account rights of its own.
    assert {doc["kind"] for doc in documents(CLUSTER_FILE)} == {"ServiceAccount", "RayCluster"}


def test_the_irsa_role_trusts_exactly_the_pods_service_accounts():
    trust = json.loads((REPO / "infra" / "aws" / "irsa-trust-policy.json").read_text())
    [statement] = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    provider = statement["Principal"]["Federated"].split(":oidc-provider/", 1)[1]
    condition = statement["Condition"]["StringEquals"]
    assert condition[f"{provider}:aud"] == "sts.amazonaws.com"
    subjects = {subject.rsplit(":", 1)[1] for subject in condition[f"{provider}:sub"]}
    pods = {group["template"]["spec"]["serviceAccountName"] for group in groups(ray_cluster()).values()}
    assert subjects == pods
    roles = {account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].rsplit("/", 1)[1]
             for account in service_accounts().values()}
    assert roles == {"cxr-ray-s3"}, "infra/aws/README.md creates the role under this name"


def test_head_takes_no_work_and_each_group_has_its_pool_label_and_hardware():
    cluster = ray_cluster()
    view = autoscaler_view(cluster)
    all_groups = groups(cluster)
    head, *workers = all_groups
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    assert view[head]["resources"]["CPU"] == 0 and not view[head]["resources"].get("GPU")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for name, group in all_groups.items():
        resources = ray_container(group)["resources"]
        assert resources["requests"] == resources["limits"], f"group {name}: requests differ from limits"
        gpus = pod_gpus(group)
        # Ray's GPU count is the pod's: the autoscaler scales on what Ray will see.
        assert view[name]["resources"].get("GPU", 0) == gpus, f"group {name}"
        if name == head:
            continue
        assert view[name]["min_workers"] == 0, f"group {name}: scale it from zero"
        assert view[name]["labels"].get(POOL) == ("gpu" if gpus else "cpu"), f"group {name}"
        if gpus:
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == GPU and t.get("effect", "NoSchedule") == "NoSchedule" for t in tolerations), \
                f"group {name}: no toleration for the {GPU} taint"
    assert sorted(view[name]["labels"][POOL] for name in workers) == ["cpu", "gpu"]


@pytest.mark.parametrize("job", JOBS)
def test_rayjob_submits_its_job_to_the_cluster(job):
    spec = job_spec(job)
    assert spec["clusterSelector"] == {"ray.io/cluster": ray_cluster()["metadata"]["name"]}
    assert spec["shutdownAfterJobFinishes"] is False, "the cluster outlives the job"
    assert "working_dir" not in spec.get("runtimeEnvYAML", ""), "the code is in the image"
    entrypoint_config(job)


def test_training_reads_what_preprocessing_writes():
    assert entrypoint_config("train")[1].data == entrypoint_config("preprocess")[1].output


@pytest.mark.parametrize("job", ("train", "tune"))
def test_training_is_pinned_to_the_gpu_group_and_fits_it(job):
    """A sweep's trials are training runs: the same placement, --max-concurrent of them at once."""
    _, config = entrypoint_config(job)
    concurrent = 1
    if job == "tune":
        concurrent, config = config.max_concurrent, config.train
    assert config.gpu
    assert config.node_labels == ((POOL, "gpu"),)
    cluster = ray_cluster()
    view = autoscaler_view(cluster)
    selector = dict(config.node_labels)
    matching = [name for name, node in view.items() if selector.items() <= node["labels"].items()]
    assert len(matching) == 1 and pod_gpus(groups(cluster)[matching[0]]), \
        f"--node-label {config.node_labels} selects {matching}, not the GPU group alone"
    node = view[matching[0]]
    assert config.workers * concurrent <= node["resources"]["GPU"] * node["max_workers"]


def test_tuning_reads_what_preprocessing_writes():
    assert entrypoint_config("tune")[1].train.data == entrypoint_config("preprocess")[1].output


def test_no_secrets_in_the_manifests_or_the_dockerfile():
    manifests = sorted(path for path in KUBERAY.rglob("*") if path.is_file())
    for path in [*manifests, DOCKERFILE]:
        text = path.read_text()
        for pattern in SECRET_TEXT:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"

    def literal_secrets(node):
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and "value" in node and SECRET_NAME.search(node["name"]):
                yield node["name"]
            for child in node.values():
                yield from literal_secrets(child)
        elif isinstance(node, list):
            for child in node:
                yield from literal_secrets(child)

    for path in manifests:
        for doc in documents(path):
            assert doc.get("kind") != "Secret", path.name
            assert not list(literal_secrets(doc)), f"{path.name}: secret values written out"
