"""What a job asks of the Ray cluster, checked before any worker or actor starts.

Ray Train's placement group and Ray Data's actor pool wait without a word, and without
end, for resources the cluster does not have: `--workers 64` on 2 CPUs, or `--actors 100`,
sat for minutes at zero progress. So every job that starts workers or actors first asks
`wait_for` whether the live nodes hold its request:

- a Ray that cannot grow (the one the job started itself, or a cluster without an
  autoscaler) holds what it holds: a request beyond it is a one-line error naming what
  is there;
- a cluster that can grow is asked for what is missing (`ray.autoscaler.sdk.
  request_resources`, Ray's documented way to ask the autoscaler ahead of the work) and
  watched: one line when the wait starts, one a minute while it lasts, and a one-line
  error once `--wait-timeout` seconds pass without enough nodes.

The sizing rules that both training workers and scoring actors follow live here too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import ray

from cxr.errors import UserError

log = logging.getLogger(__name__)

# The smallest CPU share a training worker or a scoring actor is given. Each is a TensorFlow
# process (0.7 GB at import, a few GB while training: docs/benchmarks.md) running its own
# thread pools, and a training worker takes part in collective ops that wait for the
# slowest; below half a core each, a run is contention: 64 workers on 2 CPUs (1/64 each)
# made no progress at all (issue 28). Two workers or actors on 2 CPUs, 0.5 each, is what
# the tests and a laptop run, and works. An explicit --cpus-per-worker is the user's choice
# and is only checked to fit.
MIN_CPU_SHARE = 0.5
# How often the live nodes are read while waiting, and how often the wait is reported.
POLL_SECONDS = 2.0
REPORT_SECONDS = 60.0
# Ray's default node label naming a node's group (docs: "Default node labels"), set from
# the RAY_NODE_TYPE_NAME that the cluster launcher (`ray up`, for its head, and autoscaler
# v2 for every node it starts) and KubeRay give each node they start, and only they.
NODE_GROUP_LABEL = "ray.io/node-group"

T = TypeVar("T")


def eligible_resources(nodes: list[dict], labels: tuple[tuple[str, str], ...] = ()) -> dict[str, float]:
    """CPUs and GPUs of the live nodes (`ray.nodes()`) that carry every label in `labels`."""
    eligible = [n for n in nodes if n.get("Alive") and all(n.get("Labels", {}).get(k) == v for k, v in labels)]
    return {key: sum(n["Resources"].get(key, 0) for n in eligible) for key in ("CPU", "GPU")}


def cpu_share(count: int, cpus: float, asked: str, each: str, where: str = "the cluster") -> float:
    """CPUs each of `count` workers or actors (`each`) reserves of `cpus`; refuse, in one
    line naming `asked`, a request whose shares would fall below MIN_CPU_SHARE.

    A whole CPU each while one is left over for the Ray Data tasks that read and decode
    their input; otherwise equal shares of all CPUs but one (of half of them, on one or two):
    workers or actors holding every CPU would wait forever for their input (GUIDE: 2
    workers on 2 CPUs deadlocked at one CPU each).
    """
    share = 1.0 if count + 1 <= cpus else max(cpus - 1, cpus / 2) / count
    if share < MIN_CPU_SHARE:
        raise UserError(f"{asked} needs at least {least_cpus(count)} CPUs (half a CPU or more per {each}, "
                        f"beside the data's reading: smaller shares make no progress), found {cpus:g} on {where}")
    return share


def least_cpus(count: int) -> int:
    """The fewest whole CPUs on which `cpu_share` gives `count` a share of MIN_CPU_SHARE."""
    wanted = count * MIN_CPU_SHARE
    return min(math.ceil(wanted + 1), math.ceil(2 * wanted), count + 1)


@dataclass(frozen=True)
class ActorPlan:
    """The model actors of a scoring run (cxr.scoring.predictor) and what each reserves."""

    actors: int
    cpus: float
    gpus: int
    threads: int  # TensorFlow's intra-op threads in each actor: the node's cores shared out


def actor_plan(found: dict[str, float], gpu: bool, actors: int | None) -> ActorPlan:
    """The actors `--actors` (None: one per GPU, or half the CPUs, at most 4) asks for on a
    cluster of `found` resources; refused in one line when they do not fit."""
    cpus, gpus = found.get("CPU", 0), found.get("GPU", 0)
    if gpu:
        count = actors or max(1, int(gpus))
        asked = f"--actors {count} --gpu" if actors else "--gpu"
        if gpus < count:
            raise UserError(f"{asked} needs {count} GPU(s) for the model actors, found {gpus:g} on the cluster")
        if cpus < count:
            raise UserError(f"{asked} needs {count} CPU(s) beside the GPUs, one per model actor, "
                            f"found {cpus:g} on the cluster")
        return ActorPlan(actors=count, cpus=1.0, gpus=1, threads=max(1, int(cpus) // count))
    count = actors or max(1, min(4, int(cpus) // 2))
    asked = f"--actors {count}" if actors else f"{count} model actor(s)"
    share = cpu_share(count, cpus, asked, "actor")
    return ActorPlan(actors=count, cpus=share, gpus=0, threads=max(1, int(cpus) // count))


def wait_for_actors(gpu: bool, actors: int | None, started_ray: bool, wait_timeout: float) -> ActorPlan:
    """The actor plan once the cluster holds it (see `wait_for`)."""
    bundle = {"CPU": 1.0, **({"GPU": 1.0} if gpu else {})}
    return wait_for(lambda found: actor_plan(found, gpu, actors), started_ray=started_ray,
                    wait_timeout=wait_timeout, demand=[bundle] * (actors or 1))


def wait_for(plan: Callable[[dict[str, float]], T], *, started_ray: bool, wait_timeout: float, demand: list[dict],
             labels: tuple[tuple[str, str], ...] = (), nodes: Callable[[], list[dict]] | None = None,
             poll_seconds: float = POLL_SECONDS, report_seconds: float = REPORT_SECONDS) -> T:
    """`plan` of the resources of the live nodes with `labels`, as soon as it accepts them.

    `plan` raises a UserError, saying what is short, while they do not suffice. On a Ray
    that cannot grow, or with `wait_timeout` 0, that error is the answer; on a cluster that
    can grow, the autoscaler is asked for `demand` (resource bundles, each on a node with
    `labels`) and the nodes are read every `poll_seconds` until the plan holds or
    `wait_timeout` seconds have passed. `nodes` reads the nodes (default `ray.nodes`).
    """
    nodes = nodes or ray.nodes
    try:
        return plan(eligible_resources(nodes(), labels))
    except UserError as short:
        if not can_grow(started_ray, nodes()):
            raise
        if wait_timeout <= 0:
            raise UserError(f"{short}; not waiting for the autoscaler (--wait-timeout 0)") from None
        log.info("waiting up to %s for the autoscaler: %s (`ray status` shows the nodes it starts; "
                 "--wait-timeout sets how long)", _duration(wait_timeout), short)
    _ask_autoscaler(demand, labels)
    start = reported = time.monotonic()
    try:
        while True:
            time.sleep(max(0.0, min(poll_seconds, start + wait_timeout - time.monotonic())))
            try:
                return plan(eligible_resources(nodes(), labels))
            except UserError as short:
                now = time.monotonic()
                if now - start >= wait_timeout:
                    raise UserError(f"{short} after {_duration(wait_timeout)} of waiting for the autoscaler "
                                    f"(--wait-timeout {wait_timeout:g})") from None
                if now - reported >= report_seconds:
                    log.info("still waiting after %s: %s", _duration(now - start), short)
                    reported = now
    finally:
        _ask_autoscaler([], ())  # the request persists until replaced: withdraw it


def can_grow(started_ray: bool, nodes: list[dict]) -> bool:
    """Whether an autoscaler may add nodes to the connected cluster.

    Ray 2.60 has no public API for this (ray-project/ray#52033 asks for one). Two signals:
    - the cluster config an autoscaler reports to the GCS (ray-project/ray#49568), which
      Ray's own libraries read for this question (Ray Data's `is_autoscaling_enabled`,
      Ray Train V2's maximum-resources check): a node group that may grow. Ray 2.60's own
      autoscalers do not report it yet; newer ones and managed platforms do.
    - otherwise, a live node labelled with its node group (NODE_GROUP_LABEL): only the
      cluster launcher and KubeRay, the two ways of running Ray's autoscaler, start nodes
      with one. A Ray started with `ray start` or `ray.init` has none, and no autoscaler
      that could add a node to it. A KubeRay cluster with autoscaling off would be taken
      as growing: the job then waits --wait-timeout before its error.
    """
    if started_ray:
        return False
    return grows(nodes, _reported_cluster_config())


def grows(nodes: list[dict], cluster_config) -> bool:
    """can_grow's rule, given the live nodes and the reported cluster config (or None)."""
    if cluster_config is not None and cluster_config.node_group_configs:
        # As Ray Data's is_autoscaling_enabled (ray/data/_internal/cluster_autoscaler/util.py).
        return any(group.max_count == -1 or group.max_count > group.min_count
                   for group in cluster_config.node_group_configs if group.resources and group.max_count != 0)
    return any(node.get("Alive") and NODE_GROUP_LABEL in node.get("Labels", {}) for node in nodes)


def _reported_cluster_config():
    """The autoscaler's cluster config from the GCS, or None (not reported, or a Ray without the call)."""
    from ray._private import state  # Ray's GlobalState: where its libraries read the config

    read = getattr(state.state, "get_cluster_config", None)
    return read() if read else None


def _ask_autoscaler(bundles: list[dict], labels: tuple[tuple[str, str], ...]) -> None:
    """Ask the autoscaler to fit `bundles` (each on a node with `labels`); [] withdraws the request."""
    from ray.autoscaler.sdk import request_resources

    selectors = [dict(labels) for _ in bundles] if labels and bundles else None
    request_resources(bundles=list(bundles), bundle_label_selectors=selectors)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"
