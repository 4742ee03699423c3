"""infra/kuberay and infra/Dockerfile agree with the project: the Ray and Python versions that
pyproject.toml pins, the jobs' own argument parsers, the GPU pool training is pinned to; no secrets.

No cluster and no Docker: the manifests are read as YAML, and the groups' Ray resources and node
labels are taken as the Ray autoscaler itself derives them from the RayCluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

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


def pinned_ray_version() -> str:
    for text in PROJECT["dependencies"]:
        requirement = Requirement(text)
        if requirement.name == "ray":
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"pyproject.toml does not pin ray: {text}"
            return specifier.version
    raise AssertionError("pyproject.toml does not depend on ray")


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
    """The RayJob's entrypoint, `python jobs/<job>.py ARGS`, read by that job's own parse_args and
    build_config: (args, config)."""
    python, script, *argv = shlex.split(job_spec(job)["entrypoint"])
    assert (python, script) == ("python", f"jobs/{job}.py")
    path = REPO / script
    assert path.is_file(), f"{script} does not exist"
    module_spec = importlib.util.spec_from_file_location(f"kuberay_job_{job}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = module.parse_args(argv)
    except SystemExit:
        args = None
    if args is None:    # argparse's one-line error, not its usage text
        pytest.fail(f"rayjob-{job}.yaml: {script} rejects the entrypoint: {stderr.getvalue().strip().splitlines()[-1]}")
    return args, module.build_config(args)


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
        ("ray.io/v1", "RayCluster"), ("v1", "ServiceAccount")]
    for job in JOBS:
        path = KUBERAY / f"rayjob-{job}.yaml"
        assert [(d["apiVersion"], d["kind"]) for d in documents(path)] == [("ray.io/v1", "RayJob")], path.name


def test_cluster_runs_the_pinned_ray_in_the_images_the_dockerfile_builds():
    cluster = ray_cluster()
    assert cluster["spec"]["rayVersion"] == pinned_ray_version()
    _, builds = dockerfile_builds()
    for name, group in groups(cluster).items():
        image = ray_container(group)["image"]
        assert image in builds, f"group {name}: {image} is none of the Dockerfile's tags {sorted(builds)}"
        assert builds[image]["CXR_EXTRA"] == ("gpu" if pod_gpus(group) else "cpu"), f"group {name}: {image}"


def test_dockerfile_builds_on_the_pinned_ray_and_python_with_one_tensorflow_extra():
    defaults, builds = dockerfile_builds()
    python = SpecifierSet(PROJECT["requires-python"])
    for tag, args in {"(defaults)": defaults, **builds}.items():
        match = re.fullmatch(r"rayproject/ray:(?P<ray>[^-]+)-py(?P<major>\d)(?P<minor>\d+)-(?P<flavour>cpu|gpu)",
                             args["RAY_IMAGE"])
        assert match, f"{tag}: RAY_IMAGE={args['RAY_IMAGE']} is not an official CPU or GPU Ray image"
        assert match["ray"] == pinned_ray_version(), f"{tag}: RAY_IMAGE={args['RAY_IMAGE']}"
        assert Version(f"{match['major']}.{match['minor']}") in python, f"{tag}: RAY_IMAGE={args['RAY_IMAGE']}"
        # The TensorFlow build goes with the Ray image's: CUDA in the GPU image, none in the CPU one.
        assert args["CXR_EXTRA"] == match["flavour"], f"{tag}: CXR_EXTRA={args['CXR_EXTRA']}"
        assert args["CXR_EXTRA"] in PROJECT["optional-dependencies"], f"{tag}: CXR_EXTRA={args['CXR_EXTRA']}"
    assert {tag.rsplit(":", 1)[-1] for tag in builds} == {f"{PROJECT['version']}-{x}" for x in ("cpu", "gpu")}


def test_dockerfile_installs_the_project_with_the_constraints_where_the_jobs_run():
    workdir, copied, installed_in = "/", {}, []
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif keyword == "COPY":
            *sources, dest = [word for word in rest.split() if not word.startswith("--")]
            dest = posixpath.join(workdir, dest)
            for source in sources:
                name = source.rstrip("/")
                assert (REPO / name).exists(), f"COPY {source}: not in the repository"
                into = (REPO / name).is_file() and dest.endswith("/")
                copied[posixpath.normpath(posixpath.join(dest, name) if into else dest)] = name
        elif keyword == "RUN" and "pip install" in rest:
            assert re.search(r"(^|\s)-c constraints\.txt\s", rest), rest
            assert ".[${CXR_EXTRA}]" in rest, rest
            installed_in.append(workdir)
    packages = {name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", "constraints.txt", PROJECT["readme"], *packages, "jobs"}
    assert set(copied.values()) == needed
    assert installed_in == [workdir], "one pip install, in the working directory the jobs run from"
    for name in needed:
        assert copied.get(posixpath.join(workdir, name)) == name, f"{name} is not in the working directory {workdir}"


def test_pods_run_as_the_s3_service_account_with_a_memory_backed_object_store():
    account = the_one("ServiceAccount", CLUSTER_FILE)["metadata"]
    assert "eks.amazonaws.com/role-arn" in account.get("annotations", {})
    for name, group in groups(ray_cluster()).items():
        pod = group["template"]["spec"]
        assert pod.get("serviceAccountName") == account["name"], name
        shm = [m["name"] for m in ray_container(group).get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        media = [v.get("emptyDir", {}).get("medium") for v in pod.get("volumes", []) if v["name"] in shm]
        assert media == ["Memory"], f"group {name}: /dev/shm is not a memory-backed emptyDir"


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
    args, config = entrypoint_config(job)
    concurrent = 1
    if job == "tune":
        concurrent, config = config.max_concurrent, config.train
    assert config.gpu
    assert args.node_label == [f"{POOL}=gpu"]
    cluster = ray_cluster()
    view = autoscaler_view(cluster)
    selector = dict(config.node_labels)
    matching = [name for name, node in view.items() if selector.items() <= node["labels"].items()]
    assert len(matching) == 1 and pod_gpus(groups(cluster)[matching[0]]), \
        f"--node-label {args.node_label} selects {matching}, not the GPU group alone"
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
