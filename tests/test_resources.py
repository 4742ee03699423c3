"""Resources checked before work starts (cxr.resources): more workers or actors than a Ray that
cannot grow holds is one line at once; a cluster that can grow is waited for, up to
--wait-timeout; and the training job's numeric flags and classes say what they mean."""

from __future__ import annotations

import json
import threading
import time

import pytest

from cxr import resources
from cxr.config import EvaluateConfig, PredictConfig, TrainConfig
from cxr.errors import UserError
from cxr.train import settings
from cxr.train.job import _cpus_per_worker, epoch_plan, worker_cpus
from tests.cli import assert_one_line_error, run_job
from tests.manifests import as_manifest


def live_nodes_in_a_node_group(ray_session):
    """The session Ray's live nodes as a launcher or KubeRay would have started them (with
    their node group): a cluster `resources.can_grow` takes as autoscaling."""
    return [{**node, "Labels": {**node["Labels"], resources.NODE_GROUP_LABEL: "cpu-workers"}}
            for node in ray_session.nodes()]


def requested_bundles() -> list[dict]:
    """What the session Ray's autoscaler has been asked to fit, where request_resources wrote it:
    the GCS's resource constraints for an autoscaler v2 (as this process's Ray takes it to be,
    a value Ray caches per process), the internal KV for v1."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        state = get_cluster_resource_state(internal_kv_get_gcs_client())
        return [dict(by_count.request.resources_bundle)
                for constraint in state.cluster_resource_constraints
                for by_count in constraint.resource_requests for _ in range(by_count.count)]
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


# --- the sizing rules --------------------------------------------------------------------


@pytest.mark.parametrize("count, cpus, share", [(1, 1, 0.5), (1, 2, 1.0), (2, 2, 0.5), (3, 4, 1.0), (4, 4, 0.75),
                                                (33 - 1, 17, 0.5), (64, 33, 0.5)])
def test_shares_are_whole_cpus_while_one_is_left_for_the_data_and_never_below_half(count, cpus, share):
    assert resources.cpu_share(count, cpus, "x", "worker") == pytest.approx(share)
    assert resources.least_cpus(count) <= cpus


@pytest.mark.parametrize("count, least", [(1, 1), (2, 2), (3, 3), (4, 3), (10, 6), (64, 33), (100, 51)])
def test_the_fewest_cpus_named_are_the_fewest_that_work(count, least):
    assert resources.least_cpus(count) == least
    assert resources.cpu_share(count, least, "x", "worker") >= resources.MIN_CPU_SHARE
    with pytest.raises(UserError):
        resources.cpu_share(count, least - 1, "x", "worker")


def test_64_workers_on_2_cpus_say_how_many_cpus_they_need():
    with pytest.raises(UserError) as refused:
        _cpus_per_worker(TrainConfig(workers=64, batch_size=64), {"CPU": 2})
    assert str(refused.value) == ("--workers 64 needs at least 33 CPUs (half a CPU or more per worker, beside the "
                                  "data's reading: smaller shares make no progress), found 2 on the cluster")
    # Two workers on two CPUs, half a CPU each, keep working; --cpus-per-worker is the user's to choose.
    assert _cpus_per_worker(TrainConfig(workers=2), {"CPU": 2}) == 0.5
    assert _cpus_per_worker(TrainConfig(workers=8, cpus_per_worker=0.25), {"CPU": 2}) == 0.25
    # A sweep's concurrent trials count together.
    with pytest.raises(UserError, match=r"^--workers 2 x --max-concurrent 4 needs at least 5 CPUs"):
        _cpus_per_worker(TrainConfig(workers=2), {"CPU": 4}, concurrent_runs=4)


def test_actor_plans_default_to_what_the_cluster_holds_and_refuse_more():
    assert resources.actor_plan({"CPU": 2}, gpu=False, actors=None) == resources.ActorPlan(1, 1.0, 0, 2)
    assert resources.actor_plan({"CPU": 8}, gpu=False, actors=None) == resources.ActorPlan(4, 1.0, 0, 2)
    assert resources.actor_plan({"CPU": 2}, gpu=False, actors=2) == resources.ActorPlan(2, 0.5, 0, 1)
    assert resources.actor_plan({"CPU": 16, "GPU": 2}, gpu=True, actors=None) == resources.ActorPlan(2, 1.0, 1, 8)
    with pytest.raises(UserError, match=r"^--actors 100 needs at least 51 CPUs .*, found 2 on the cluster$"):
        resources.actor_plan({"CPU": 2}, gpu=False, actors=100)
    with pytest.raises(UserError, match=r"^--actors 3 --gpu needs 3 GPU\(s\) for the model actors, found 2 "):
        resources.actor_plan({"CPU": 16, "GPU": 2}, gpu=True, actors=3)


def test_a_cluster_grows_when_an_autoscaler_may_add_nodes():
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    by_hand = [{"Alive": True, "Labels": {"ray.io/node-id": "a"}}]
    launched = [{"Alive": True, "Labels": {"ray.io/node-id": "a", resources.NODE_GROUP_LABEL: "head"}}]
    assert not resources.grows(by_hand, None) and resources.grows(launched, None)
    assert not resources.can_grow(True, launched)  # the job's own Ray never grows
    fixed = ClusterConfig(node_group_configs=[NodeGroupConfig(name="cpu", resources={"CPU": 4}, min_count=2,
                                                              max_count=2)])
    elastic = ClusterConfig(node_group_configs=[NodeGroupConfig(name="gpu", resources={"GPU": 1}, max_count=4)])
    # A reported cluster config, when there is one, is what the autoscaler says.
    assert not resources.grows(launched, fixed) and resources.grows(by_hand, elastic)


# --- against the session's local Ray (2 CPUs, no GPU, no autoscaler) ---------------------------


def test_the_session_ray_cannot_grow(ray_session):
    assert not resources.can_grow(False, ray_session.nodes())


def test_more_workers_than_a_fixed_cluster_holds_fail_at_once(ray_session):
    began = time.monotonic()
    with pytest.raises(UserError, match=r"^--workers 64 needs at least 33 CPUs .*, found 2 on the cluster$"):
        worker_cpus(TrainConfig(workers=64, batch_size=64), started_ray=False)
    with pytest.raises(UserError, match=r"^--workers 1 --gpu needs 1 GPUs, found 0 on the cluster$"):
        worker_cpus(TrainConfig(gpu=True), started_ray=False)
    assert worker_cpus(TrainConfig(workers=2), started_ray=False) == 0.5
    assert time.monotonic() - began < 5  # nothing waited
    assert requested_bundles() == []  # and the autoscaler was asked for nothing


def test_more_actors_than_a_fixed_cluster_holds_fail_at_once(ray_session):
    with pytest.raises(UserError, match=r"^--actors 100 needs at least 51 CPUs .*, found 2 on the cluster$"):
        resources.wait_for_actors(gpu=False, actors=100, started_ray=False, wait_timeout=600)
    with pytest.raises(UserError, match=r"^--gpu needs 1 GPU\(s\) for the model actors, found 0 on the cluster$"):
        resources.wait_for_actors(gpu=True, actors=None, started_ray=False, wait_timeout=600)
    assert resources.wait_for_actors(gpu=False, actors=None, started_ray=False, wait_timeout=600).actors == 1


def test_a_cluster_that_can_grow_is_waited_for_until_the_timeout(ray_session, caplog, monkeypatch):
    # What the job asks Ray's autoscaler for, on its way to the real request_resources: which
    # of Ray's stores keeps the request depends on which autoscaler this process takes the
    # cluster to have, a per-process cache that other tests' clusters can leave set.
    asked: list[list[dict]] = []
    ask = resources._ask_autoscaler

    def asking(bundles, labels):
        asked.append(list(bundles))
        ask(bundles, labels)

    monkeypatch.setattr(resources, "_ask_autoscaler", asking)

    def nodes():
        return live_nodes_in_a_node_group(ray_session)

    config = TrainConfig(workers=64, batch_size=64, wait_timeout=2)
    began = time.monotonic()
    with caplog.at_level("INFO", logger="cxr.resources"), pytest.raises(UserError) as refused:
        worker_cpus(config, started_ray=False, nodes=nodes)
    waited = time.monotonic() - began
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--workers 64 needs at least 33 CPUs")
    assert message.endswith("found 2 on the cluster after 2 s of waiting for the autoscaler (--wait-timeout 2)")
    assert 2 <= waited < 10
    assert "waiting up to 2 s for the autoscaler: --workers 64 needs at least 33 CPUs" in caplog.text
    # The autoscaler was asked for a whole CPU per worker while the job waited, and the
    # request (which outlives its caller) was withdrawn when it gave up.
    assert asked[0] == [{"CPU": 1.0}] * 64 and asked[-1] == []
    # --wait-timeout 0: no wait.
    with pytest.raises(UserError, match=r"on the cluster; not waiting for the autoscaler \(--wait-timeout 0\)$"):
        worker_cpus(TrainConfig(workers=64, batch_size=64, wait_timeout=0), started_ray=False, nodes=nodes)


def test_the_wait_ends_when_the_resources_appear(ray_session, caplog):
    arrived = threading.Event()

    def plan(found: dict) -> float:
        if not arrived.is_set():
            raise UserError(f"--workers 4 --gpu needs 4 GPUs, found {found['GPU']:g} on the cluster")
        return 1.0

    threading.Timer(1.0, arrived.set).start()
    began = time.monotonic()
    with caplog.at_level("INFO", logger="cxr.resources"):
        share = resources.wait_for(plan, started_ray=False, wait_timeout=30, demand=[{"CPU": 1.0, "GPU": 1.0}] * 4,
                                   nodes=lambda: live_nodes_in_a_node_group(ray_session), poll_seconds=0.2,
                                   report_seconds=0.5)
    assert share == 1.0 and 1.0 <= time.monotonic() - began < 5
    lines = [r.getMessage() for r in caplog.records if r.name == "cxr.resources"]
    assert lines[0].startswith("waiting up to 30 s for the autoscaler: --workers 4 --gpu needs 4 GPUs, found 0")
    assert any(line.startswith("still waiting after ") for line in lines[1:])
    assert requested_bundles() == []


# --- numeric flags and what they say -----------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "-4"], "--batch-size must be positive, got -4"),
    (["--batch-size", "0", "--workers", "2"], "--batch-size must be positive, got 0"),
    (["--batch-size", "2", "--workers", "4"], "--batch-size 2 is smaller than --workers"),
    (["--workers", "-1", "--batch-size", "-4"], "--workers must be at least 1, got -1"),
    (["--cpus-per-worker", "-1"], "--cpus-per-worker must be positive, got -1.0"),
    (["--wait-timeout", "-5"], "--wait-timeout must be 0 seconds (fail at once) or more, got -5"),
    (["--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),
    (["--appearance-augment", "5"], "--appearance-augment 5 is too strong: --augment-gamma must be in [0, 1.0), got 1.5"),
])
def test_training_flags_say_what_is_wrong_with_them(args, message):
    from cxr.cli.train import JOB

    with pytest.raises(UserError) as refused:
        JOB.build_config(JOB.parse_args(args))
    assert str(refused.value).startswith(message)


def test_wait_timeout_reaches_every_job_that_starts_workers_or_actors():
    from cxr.cli import evaluate, predict, train, tune

    def built(job, *args):
        return job.JOB.build_config(job.JOB.parse_args(list(args)))

    assert built(train).wait_timeout == 600 and built(train, "--wait-timeout", "0").wait_timeout == 0
    assert built(tune, "--wait-timeout", "30").train.wait_timeout == 30
    assert built(predict, "--model", "m", "--input", "i", "--output", "o", "--wait-timeout", "5").wait_timeout == 5
    assert built(evaluate, "--run", "r", "--wait-timeout", "5").wait_timeout == 5
    for build in (lambda: PredictConfig(model="m", input="i", output="o", wait_timeout=-1),
                  lambda: EvaluateConfig(run="r", wait_timeout=-1)):
        with pytest.raises(UserError, match=r"--wait-timeout must be 0 seconds \(fail at once\) or more, got -1"):
            build()
    with pytest.raises(UserError, match="--actors must be at least 1, got 0"):
        PredictConfig(model="m", input="i", output="o", actors=0)
    with pytest.raises(UserError, match="--seed must be in"):
        EvaluateConfig(run="r", seed=-3)


def test_a_batch_larger_than_the_training_split_is_said_in_the_epoch_plan():
    manifest = as_manifest()  # 40 training images
    plan, whole = epoch_plan(TrainConfig(batch_size=1_000_000, epochs=3), manifest)
    assert whole and plan == ("--batch-size 1000000 is larger than the training split (40 images): each of the 3 "
                              "epoch(s) is one step on all of it")
    plan, whole = epoch_plan(TrainConfig(batch_size=16, epochs=3), manifest)
    assert not whole and plan == "up to 3 epoch(s) of 3 step(s), 16 images a step (40 training images)"


# --- resuming with other execution settings, or other classes --------------------------------


def _record(manifest, **overrides) -> dict:
    config = TrainConfig(**{"data": "shards", "storage": "runs", "name": "exp1", **overrides})
    return settings.run_record(config, manifest, config.data, None)


def test_wait_timeout_may_change_on_resume_and_is_named():
    recorded = _record(as_manifest())
    merged, changed = settings.check_record("runs/exp1", recorded, _record(as_manifest(), wait_timeout=60))
    assert changed == ["--wait-timeout 600 -> 60"]
    # A run recorded before the setting existed resumes without a word about it.
    for start in recorded["starts"]:
        del start["config"]["wait_timeout"]
    del recorded["config"]["wait_timeout"]
    assert settings.check_record("runs/exp1", recorded, _record(as_manifest()))[1] == []


def test_a_resume_on_shards_of_other_classes_is_refused_by_their_names():
    recorded = _record(as_manifest())
    other = as_manifest({"class_names": ["COVID", "Normal", "shards"]})
    with pytest.raises(UserError) as refused:
        settings.check_record("runs/exp1", recorded, _record(other))
    assert str(refused.value) == ("runs/exp1: the run was trained on classes COVID, Normal (in label order), but "
                                  "--data shards holds COVID, Normal, shards; resume it with --data shards, or "
                                  "start a new run with another --name")


@pytest.mark.slow
def test_the_train_job_with_64_workers_on_its_own_ray_fails_in_one_line_before_training(tiny_shards, tmp_path):
    result = run_job("train", "--data", tiny_shards, "--storage", str(tmp_path / "runs"), "--workers", "64",
                     "--batch-size", "64", env={"RAY_ADDRESS": None}, timeout=120)
    assert_one_line_error(result, "--workers 64 needs at least 33 CPUs")
    assert not (tmp_path / "runs" / "scratch_cnn").exists()
