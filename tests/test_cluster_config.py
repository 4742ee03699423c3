"""ray_cluster.yaml (infra/Dockerfile's images) and ray_cluster_stock_images.yaml (Ray's images, the
project installed at boot): valid for the installed Ray, the same cluster, and its nodes run what the
tests ran with; the head's IAM policy allows what Ray's AWS provider calls and no more.

No cluster and no network: the configs go through the schema and the functions Ray itself
applies to them before `ray up` talks to AWS (defaults, merged setup commands, per-node-type
overrides). Versions and paths are read from pyproject.toml, the constraints files and the configs.
"""

import copy
import importlib.metadata
import json
import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

from tests.pins import constraint_pins, pinned_version

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "ray_cluster.yaml"                        # infra/Dockerfile's images
STOCK_YAML = ROOT / "ray_cluster_stock_images.yaml"             # the fallback: Ray's images, installs at boot
AWS_DIR = ROOT / "infra" / "aws"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
POOL_LABEL = "cxr-pool"  # the key jobs/train.py --node-label selects on


def load_config(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def config() -> dict:
    return load_config()


@pytest.fixture
def stock() -> dict:
    return load_config(STOCK_YAML)


@pytest.fixture(params=[CLUSTER_YAML, STOCK_YAML], ids=lambda path: path.name)
def either(request) -> dict:
    """Each of the two cluster files."""
    return load_config(request.param)


def ray_view_of(config: dict) -> AutoscalingConfig:
    """The config as Ray's autoscaler reads it: defaults filled in, commands merged, validated."""
    return AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True)


def has_gpu(node_type: dict) -> bool:
    return node_type["resources"].get("GPU", 0) > 0


def pip_installs(command: str) -> list[list[str]]:
    """The words of every `pip install` in a shell command (split at ;, && and ||)."""
    calls = []
    for part in re.split(r"&&|\|\||;", command):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
            calls.append(words)
    return calls


def option(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def test_config_passes_rays_schema_and_validation(either):
    jsonschema.validate(either, SCHEMA)
    # What `ray up` runs before any AWS call: Ray's defaults filled in, then its own checks
    # (schema again, head_node_type, min_workers against max_workers, docker image and name).
    validate_config(prepare_config(copy.deepcopy(either)))


def _unknown_node_type_key(config):
    next(iter(config["available_node_types"].values()))["gpus"] = 4


def _float_resource(config):
    next(iter(config["available_node_types"].values()))["resources"]["CPU"] = 0.5


@pytest.mark.parametrize("mistake", [_unknown_node_type_key, _float_resource])
def test_validation_rejects_a_broken_copy(config, mistake):
    mistake(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def node_setup_commands(config: dict, name: str) -> list[str]:
    """Ray's own composition: the head runs setup_commands + head_setup_commands; a worker type its own
    worker_setup_commands when it has them, else setup_commands + worker_setup_commands."""
    view = ray_view_of(config)
    return view.get_head_setup_commands() if name == config["head_node_type"] else view.get_worker_setup_commands(name)


def dockerfile_tags() -> dict[str, str]:
    """infra/Dockerfile's documented builds: image name and tag (without the registry) -> the extra it installs."""
    text = (ROOT / "infra" / "Dockerfile").read_text()
    builds = {}
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line.lstrip("# ")) if line.startswith("#   docker build ") else []
        if words:
            extra = next((w.split("=", 1)[1] for w in words if w.startswith("CXR_EXTRA=")), "cpu")
            builds[words[words.index("-t") + 1].split("/", 1)[1]] = extra
    return builds


def test_every_node_runs_the_dockerfile_image_of_its_kind_and_installs_nothing(config):
    """ray_cluster.yaml: a scale-up costs an image pull, not an install."""
    builds = dockerfile_tags()
    registries = set()
    for name, node_type in config["available_node_types"].items():
        image = ray_view_of(config).get_docker_config(name)["image"]
        registry, tag = image.split("/", 1)
        registries.add(registry)
        assert builds.get(tag) == ("gpu" if has_gpu(node_type) else "cpu"), f"{name} runs {image}"
        assert not [w for c in node_setup_commands(config, name) for w in pip_installs(c)], f"{name} installs"
    [registry] = registries
    # Each host logs docker in to that registry before Ray pulls (ECR wants a login even from EC2).
    assert any("docker login" in command and command.rstrip().endswith(registry)
               for command in config["initialization_commands"]), config["initialization_commands"]
    assert "." not in config["file_mounts"].values(), "the code is in the image and in each job's upload"


def test_the_fallback_is_the_same_cluster(config, stock):
    """ray_cluster_stock_images.yaml differs only in how a node gets the project."""
    how = ("docker", "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
           "file_mounts", "rsync_exclude", "rsync_filter")

    def cluster(c):
        c = {key: value for key, value in copy.deepcopy(c).items() if key not in how}
        for node_type in c["available_node_types"].values():
            for key in how:
                node_type.pop(key, None)
        return c

    assert cluster(config) == cluster(stock)
    assert config["docker"]["container_name"] == stock["docker"]["container_name"]
    token_folders = {remote for remote, local in config["file_mounts"].items() if local != "."}
    assert token_folders == {remote for remote, local in stock["file_mounts"].items() if local != "."}


def test_fallback_nodes_install_the_project_pinned_with_the_right_tensorflow(stock):
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"cpu", "gpu"} <= extras.keys()
    # The repository the commands install is the one file_mounts ships from the `ray up` folder.
    [mount] = [remote for remote, local in stock["file_mounts"].items() if local == "."]
    for name, node_type in stock["available_node_types"].items():
        commands = node_setup_commands(stock, name)
        installs = [words for command in commands for words in pip_installs(command)]
        for command in commands:
            assert not re.search(r"[\"']~", command), f"{name}: a quoted ~ does not expand: {command}"
        extra = "gpu" if has_gpu(node_type) else "cpu"
        # The gpu extra's CUDA wheels are pinned by constraints-gpu.txt, everything else by constraints.txt.
        needed = {"constraints.txt", "constraints-gpu.txt"} if extra == "gpu" else {"constraints.txt"}
        for words in installs:
            given = {words[i + 1].replace("$HOME", "~", 1) for i, w in enumerate(words) if w in ("-c", "--constraint")}
            assert given == {f"{mount}/{file}" for file in needed}, f"{name}: unpinned pip install: {shlex.join(words)}"
        projects = [option(words, "-e").replace("$HOME", "~", 1) for words in installs if "-e" in words]
        assert projects == [f"{mount}[{extra}]"], f"{name} installs {projects}"


def test_fallback_images_carry_the_pinned_ray(stock):
    version = pinned_version("ray")  # constraints.txt's, within pyproject.toml's range
    python = "py3" + re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])[1]
    for name, node_type in stock["available_node_types"].items():
        variant = "gpu" if has_gpu(node_type) else "cpu"
        assert ray_view_of(stock).get_docker_config(name)["image"] == f"rayproject/ray:{version}-{python}-{variant}"


def test_gpu_nodes_ask_docker_for_their_gpus(either):
    for name, node_type in either["available_node_types"].items():
        if has_gpu(node_type):
            docker = ray_view_of(either).get_docker_config(name)
            # Ray only adds --runtime=nvidia, and only when it detects it: GPUs are asked for here.
            run_options = docker.get("run_options", []) + docker.get("worker_run_options", [])
            assert any("--gpus" in opt for opt in run_options), f"{name}: no --gpus in {run_options}"


def test_every_cuda_wheel_the_gpu_extra_resolves_is_pinned():
    """tensorflow[and-cuda] bounds its nvidia-* wheels only from above: each is pinned, inside TensorFlow's range.
    The requirements are read from the installed TensorFlow's metadata (tf-keras installs the same release
    in the CPU environment; its and-cuda requirements are the GPU node's)."""
    [gpu] = [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert "and-cuda" in gpu.extras
    version = pinned_version(gpu.name)  # constraints.txt's TensorFlow, which the gpu extra's range admits
    tensorflow = importlib.metadata.distribution(gpu.name)
    assert tensorflow.version == version, (
        f"installed {gpu.name} {tensorflow.version} is not constraints.txt's {version}: re-resolve"
        " constraints-gpu.txt as its header says")
    cuda = [r for r in map(Requirement, tensorflow.requires)
            if r.marker and r.marker.evaluate({"extra": "and-cuda"}) and not r.marker.evaluate({"extra": ""})]
    pins = constraint_pins("constraints-gpu.txt")
    assert {canonicalize_name(r.name) for r in cuda} == {name for name in pins if name.startswith("nvidia-")}
    for requirement in cuda:
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)]), requirement
    # Nothing pinned twice: constraints.txt holds the rest of the environment.
    assert not set(pins) & set(constraint_pins())


def test_node_types_resources_labels_and_roles(either):
    config = either
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not has_gpu(head)
    workers = {name: t for name, t in node_types.items() if name != config["head_node_type"]}
    gpu_types = [t for t in workers.values() if has_gpu(t)]
    cpu_types = [t for t in workers.values() if not has_gpu(t)]
    assert len(gpu_types) == 1 and cpu_types
    [gpu] = gpu_types
    assert gpu["resources"]["GPU"] == 4
    assert gpu["labels"] == {POOL_LABEL: "gpu"}
    assert all(t["labels"] == {POOL_LABEL: "cpu"} and t["resources"].get("CPU", 0) > 0 for t in cpu_types)
    assert all(t.get("min_workers", 0) == 0 for t in workers.values()), "idle workers cost money"
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    for name, node_type in node_types.items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name} has no instance profile"


def test_head_may_pass_exactly_the_workers_role_and_roles_can_use_the_bucket(config):
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Name"]
                       for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    autoscaler = json.loads((AWS_DIR / "autoscaler-policy.json").read_text())
    passed = {statement["Resource"].rsplit("/", 1)[1] for statement in autoscaler["Statement"]
              if statement["Action"] == "iam:PassRole"}
    assert passed == worker_profiles  # each role is named like its instance profile

    s3 = json.loads((AWS_DIR / "s3-access-policy.json").read_text())
    granted = {action: statement["Resource"] for statement in s3["Statement"] for action in statement["Action"]}
    bucket = granted["s3:ListBucket"]
    assert granted["s3:GetObject"] == granted["s3:PutObject"] == f"{bucket}/*"



def statements(policy_file: str) -> list[dict]:
    """A policy's statements, each with Action and Resource as lists."""
    found = json.loads((AWS_DIR / policy_file).read_text())["Statement"]
    return [{**s, "Action": _as_list(s["Action"]), "Resource": _as_list(s["Resource"])} for s in found]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def condition_values(statement: dict, operator: str, key: str) -> list[str]:
    return _as_list(statement.get("Condition", {}).get(operator, {}).get(key, []))


# What Ray 2.60's AWS provider calls with the head's role (ray/autoscaler/_private/aws/node_provider.py):
# DescribeInstances (non_terminated_nodes, _get_node), RunInstances (_create_node), CreateTags
# (_create_tags, fed by the updater's set_node_tags), TerminateInstances (terminate_node(s) without
# cache_stopped_nodes). Start/StopInstances come only with cache_stopped_nodes, DeleteTags never.
AUTOSCALER_EC2_ACTIONS = {"ec2:DescribeInstances", "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"}


def test_head_policy_grants_only_what_rays_aws_provider_calls(config):
    assert config["provider"]["cache_stopped_nodes"] is False, "stopped nodes would need Start/StopInstances"
    granted = {action for s in statements("autoscaler-policy.json") for action in s["Action"]}
    assert not [a for a in granted if "*" in a], f"wildcard actions: {granted}"
    assert granted == AUTOSCALER_EC2_ACTIONS | {"iam:PassRole", "ssm:GetParameters"}
    # Nothing Ray's code would not use for this config: AWSNodeProvider's reuse of stopped nodes,
    # the CloudWatch agent check (describe_images) and `ray up`'s own bootstrap (config.py) are not
    # the head's.
    assert not config["provider"].get("cloudwatch")


def test_head_policy_has_no_unconditioned_destructive_ec2_action(config):
    """A job on the head holds the head's role: it may start, tag and end this cluster's workers only."""
    from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

    region = config["provider"]["region"]
    cluster = {TAG_RAY_CLUSTER_NAME: config["cluster_name"], TAG_RAY_NODE_KIND: NODE_KIND_WORKER}
    for statement in statements("autoscaler-policy.json"):
        ec2 = [a for a in statement["Action"] if a.startswith("ec2:")]
        for resource in statement["Resource"]:
            if resource == "*":
                assert all(a.startswith("ec2:Describe") for a in statement["Action"]), statement["Sid"]
            elif resource.split(":")[2] != "iam":    # IAM is global: its ARNs name no region
                assert resource.split(":")[3] == region, f"{statement['Sid']}: {resource} is not in {region}"
        destructive = [a for a in ec2 if not a.startswith("ec2:Describe")]
        on_instances = any(":instance/" in r or r == "*" for r in statement["Resource"])
        if not destructive or not on_instances:
            continue    # RunInstances on images, subnets, volumes... launches nothing without the instance
        for key, value in cluster.items():
            existing = condition_values(statement, "StringEquals", f"ec2:ResourceTag/{key}")
            requested = condition_values(statement, "StringEquals", f"aws:RequestTag/{key}")
            assert existing == [value] or requested == [value], (
                f"{statement['Sid']}: {destructive} on instances not tagged {key}={value}")
        if "ec2:TerminateInstances" in destructive:
            assert condition_values(statement, "StringEquals", f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}")


def test_head_may_launch_only_the_worker_types_and_retag_only_their_status(config):
    from ray.autoscaler.tags import TAG_RAY_FILE_MOUNTS_CONTENTS, TAG_RAY_NODE_STATUS, TAG_RAY_RUNTIME_CONFIG

    launches = [s for s in statements("autoscaler-policy.json")
                if "ec2:RunInstances" in s["Action"] and any(":instance/" in r for r in s["Resource"])]
    [launch] = launches
    worker_types = {t["node_config"]["InstanceType"] for name, t in config["available_node_types"].items()
                    if name != config["head_node_type"]}
    assert set(condition_values(launch, "StringEquals", "ec2:InstanceType")) == worker_types

    # After launch Ray only rewrites a worker's status tags (autoscaler/_private/updater.py, set_node_tags);
    # ray-cluster-name and ray-node-type stay as set at launch, so a job cannot adopt the head as a worker.
    retags = [s for s in statements("autoscaler-policy.json")
              if "ec2:CreateTags" in s["Action"] and "ec2:CreateAction" not in s["Condition"]["StringEquals"]]
    [retag] = retags
    assert set(condition_values(retag, "ForAllValues:StringEquals", "aws:TagKeys")) == {
        TAG_RAY_NODE_STATUS, TAG_RAY_RUNTIME_CONFIG, TAG_RAY_FILE_MOUNTS_CONTENTS}


SECRET_PATTERNS = re.compile("|".join([
    r"aws_access_key_id", r"aws_secret",  # aws_secret_access_key, AWS_SECRET...
    r"KAGGLE_KEY", r"aws_session_token", r"RAY_AUTH_TOKEN\s*[=:]",
    r"token\W{1,3}[A-Za-z0-9_\-]{20,}",  # a token's value, such as Ray's, GitHub's or Hugging Face's
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # an access key id
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
]), re.IGNORECASE)


def start_environment(command: str) -> dict[str, str]:
    """The VAR=value words before `ray start` in one of Ray's start commands."""
    words = shlex.split(command.split(";")[-1])
    return dict(word.split("=", 1) for word in words[:words.index("ray")])


def test_every_node_reads_the_token_from_a_mounted_folder(either):
    """Token auth on every node, the token read from a folder that file_mounts syncs: a single-file bind
    mount would pin the old file's inode when rsync replaces it (ray_cluster.yaml, file_mounts)."""
    starts = [c for c in either["head_start_ray_commands"] + either["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    paths = set()
    for command in starts:
        environment = start_environment(command)
        assert environment.get("RAY_AUTH_MODE") == "token", command
        paths.add(environment["RAY_AUTH_TOKEN_PATH"].replace("$HOME", "~", 1))
    [path] = paths
    folder = posixpath.dirname(path)
    assert either["file_mounts"].get(folder) == folder, f"{folder} is not mounted from the same folder of yours"
    assert not [remote for remote, local in either["file_mounts"].items()
                if local != "." and posixpath.basename(remote) == posixpath.basename(path)], "a single-file mount"


def test_no_secrets_in_the_cluster_files():
    assert SECRET_PATTERNS.search("KAGGLE_KEY: 0123abcd") and SECRET_PATTERNS.search("id AKIAABCDEFGHIJKLMNOP")
    assert SECRET_PATTERNS.search("RAY_AUTH_TOKEN=abc") and SECRET_PATTERNS.search('token: "a1b2c3d4e5f6a7b8c9d0e1"')
    # The cluster's Ray token is copied from the user's machine, never from the repository.
    for path in (CLUSTER_YAML, STOCK_YAML):
        sources = yaml.safe_load(path.read_text())["file_mounts"].values()
        assert all(source == "." or source.startswith("~/") for source in sources), path.name
    files = [CLUSTER_YAML, STOCK_YAML, *sorted(AWS_DIR.iterdir())]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in files for number, line in enumerate(path.read_text().splitlines(), 1)
             if SECRET_PATTERNS.search(line)]
    assert not found, "credentials come from instance roles, never from files:\n" + "\n".join(found)
