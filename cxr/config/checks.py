"""What every config shares: the one-line checks, and the settings several jobs have."""

from __future__ import annotations

import dataclasses

from cxr.errors import UserError
from cxr.options import flag, setting


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check(config, name: str, condition: bool, rule: str) -> None:
    """`condition` about setting `name` of `config`, or one line: its flag, `rule`, its value."""
    require(condition, f"{flag(type(config), name)} {rule}, got {getattr(config, name)!r}")


# Seconds a job waits for an autoscaling cluster to start the nodes its workers or actors
# need (cxr.resources): a cold GPU node takes a few minutes to boot and pull the image, and
# ten minutes is as long as a person watching a job should wait to hear it cannot start.
# A Ray that cannot grow never waits.
DEFAULT_WAIT_TIMEOUT = 600.0
# --seed is the root of a NumPy SeedSequence (cxr.seeds), which refuses negatives.
MAX_SEED = 2**31 - 1


def wait_timeout_setting(what: str) -> dataclasses.Field:
    """--wait-timeout, for the jobs that start workers or actors (`what`: which)."""
    return setting(DEFAULT_WAIT_TIMEOUT, flag="--wait-timeout", metavar="SECONDS", defines_run=False,
                   help=f"how long to wait for an autoscaling cluster to start the nodes the {what} need; 0 "
                        "fails at once. A Ray that cannot grow (the job's own, or a cluster without an "
                        "autoscaler) never waits")


def check_wait_timeout(config) -> None:
    check(config, "wait_timeout", config.wait_timeout >= 0, "must be 0 seconds (fail at once) or more")


def check_seed(config, name: str = "seed") -> None:
    check(config, name, 0 <= getattr(config, name) <= MAX_SEED, f"must be in [0, {MAX_SEED}]")


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as its items (`--test-sources A,B`)."""
    return tuple(item.strip() for item in text.split(",")) if text.strip() else ()
