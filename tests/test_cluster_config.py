"""ray_cluster.yaml: valid for the installed Ray, and its nodes run what the tests ran with.

No cluster and no network: the config goes through the schema and the functions Ray itself
applies to it before `ray up` talks to AWS (defaults, merged setup commands, per-node-type
overrides). Versions and paths are read from pyproject.toml, constraints.txt and the config.
"""

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
AWS_DIR = ROOT / "infra" / "aws"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
POOL_LABEL = "cxr-pool"  # the key jobs/train.py --node-label selects on


def load_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def config() -> dict:
    return load_config()


@pytest.fixture
def ray_view(config) -> AutoscalingConfig:
    """The config as Ray's autoscaler reads it: defaults filled in, commands merged, validated."""
    return AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True)


def has_gpu(node_type: dict) -> bool:
    return node_type["resources"].get("GPU", 0) > 0


def ray_pin_in_pyproject() -> str:
    pins = [m[1] for dep in PYPROJECT["project"]["dependencies"]
            if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", dep.strip()))]
    assert len(pins) == 1, PYPROJECT["project"]["dependencies"]
    return pins[0]


def ray_pin_in_constraints() -> str:
    pins = [line.split("==", 1)[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.split("==", 1)[0].strip().lower() == "ray"]
    assert len(pins) == 1, "constraints.txt must pin ray exactly once"
    return pins[0]


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


def test_config_passes_rays_schema_and_validation(config):
    jsonschema.validate(config, SCHEMA)
    # What `ray up` runs before any AWS call: Ray's defaults filled in, then its own checks
    # (schema again, head_node_type, min_workers against max_workers, docker image and name).
    validate_config(prepare_config(copy.deepcopy(config)))


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


def test_every_node_installs_the_project_pinned_with_the_right_tensorflow(config, ray_view):
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"cpu", "gpu"} <= extras.keys()
    # The repository the commands install is the one file_mounts ships from the `ray up` folder.
    [mount] = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert {".venv", ".git", "outputs"} <= set(config["rsync_exclude"])

    # Ray's own composition: the head runs setup_commands + head_setup_commands; a worker type
    # its own worker_setup_commands when it has them, else setup_commands + worker_setup_commands.
    for name, node_type in config["available_node_types"].items():
        commands = (ray_view.get_head_setup_commands() if name == config["head_node_type"]
                    else ray_view.get_worker_setup_commands(name))
        installs = [words for command in commands for words in pip_installs(command)]
        for command in commands:
            assert not re.search(r"[\"']~", command), f"{name}: a quoted ~ does not expand: {command}"
        for words in installs:
            constraints = option(words, "-c") or option(words, "--constraint")
            assert constraints and constraints.replace("$HOME", "~", 1) == f"{mount}/constraints.txt", (
                f"{name}: unpinned pip install: {shlex.join(words)}")
        projects = [option(words, "-e").replace("$HOME", "~", 1) for words in installs if "-e" in words]
        extra = "gpu" if has_gpu(node_type) else "cpu"
        assert projects == [f"{mount}[{extra}]"], f"{name} installs {projects}"


def test_docker_images_carry_the_pinned_ray(config, ray_view):
    version = ray_pin_in_pyproject()
    assert ray_pin_in_constraints() == version
    python = "py3" + re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])[1]
    for name, node_type in config["available_node_types"].items():
        docker = ray_view.get_docker_config(name)
        variant = "gpu" if has_gpu(node_type) else "cpu"
        assert docker["image"] == f"rayproject/ray:{version}-{python}-{variant}", name
        if has_gpu(node_type):
            # Ray only adds --runtime=nvidia, and only when it detects it: GPUs are asked for here.
            run_options = docker.get("run_options", []) + docker.get("worker_run_options", [])
            assert any("--gpus" in opt for opt in run_options), f"{name}: no --gpus in {run_options}"


def test_node_types_resources_labels_and_roles(config):
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


def test_no_secrets_in_the_cluster_files():
    assert SECRET_PATTERNS.search("KAGGLE_KEY: 0123abcd") and SECRET_PATTERNS.search("id AKIAABCDEFGHIJKLMNOP")
    assert SECRET_PATTERNS.search("RAY_AUTH_TOKEN=abc") and SECRET_PATTERNS.search('token: "a1b2c3d4e5f6a7b8c9d0e1"')
    # The cluster's Ray token is copied from the user's machine, never from the repository.
    sources = yaml.safe_load(CLUSTER_YAML.read_text())["file_mounts"].values()
    assert all(source == "." or source.startswith("~/") for source in sources)
    files = [CLUSTER_YAML, *sorted(AWS_DIR.iterdir())]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in files for number, line in enumerate(path.read_text().splitlines(), 1)
             if SECRET_PATTERNS.search(line)]
    assert not found, "credentials come from instance roles, never from files:\n" + "\n".join(found)
