"""Where tasks run: in this process, or as Ray tasks on a local or remote cluster."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from mixer.errors import MixerError
from mixer.ingest import inputs
from mixer.ingest.encoders import (
    TokenizerInfo,
)
from mixer.ingest.job import TokenizeJob
from mixer.ingest.progress import REPORT_INTERVAL_S, Done
from mixer.ingest.task import TaskSpec, run_task

logger = logging.getLogger(__name__)

# For choosing between this process and a local Ray (`use_ray`): Ray's fixed cost, and the
# pipeline's text bytes per second on one core (both from BENCHMARKS.md, "Scaling"), used with
# `text_bytes`, whose 4x for compressed inputs is about what zstd achieves on web text.
RAY_START_S = 7.0
# On the way out, running tasks are asked to stop (`RunControl`) and waited for this long; they
# check every STOP_POLL_S, after a batch. Only tasks still running then are force-cancelled: a
# force cancel racing a task's completion can crash the driver in Ray 2.60 (ray-project/ray
# #54798, "Tried to complete task that was not pending"), so it is the last resort.
CANCEL_WAIT_S = 10.0
STOP_POLL_S = 0.5


CORE_BYTES_PER_S = {"fast": 80e6, "giga": 80e6, "hf": 3e6}


def use_ray(job: TokenizeJob, pending: list[TaskSpec], backend: str) -> bool:
    """Whether to run on Ray: always with a `ray_address` or an explicit `workers` N > 1.

    By default (all CPUs of this machine) only when the work is large enough to repay a local
    Ray's start-up, shutdown and worker imports (`RAY_START_S`; measured in BENCHMARKS.md,
    "Scaling").
    """
    if job.workers == 0:
        return False
    if job.ray_address:
        return True
    if job.workers is not None:
        return job.workers > 1
    workers = min(os.cpu_count() or 1, len(pending))
    if workers <= 1:
        return False
    weights = [inputs.text_bytes(s.task) for s in pending]
    one_process_s = sum(weights) / CORE_BYTES_PER_S[backend]
    ray_s = RAY_START_S + max(sum(weights) / workers, max(weights)) / CORE_BYTES_PER_S[backend]
    return ray_s < one_process_s


def dispatch_order(pending: list[TaskSpec]) -> list[TaskSpec]:
    """Largest task first, ties in input order: a big file started last would run alone at the
    end. The store does not depend on this order (shards are named and listed by input order)."""
    return sorted(pending, key=lambda s: -inputs.text_bytes(s.task))


def run_in_process(
    pending: list[TaskSpec],
    info: TokenizerInfo,
    job: TokenizeJob,
    on_progress: Callable[[str, Done], None] | None = None,
):
    """Sequential, no Ray: small jobs (see `use_ray`), --workers 0/1, memory:// inputs."""
    for spec in pending:
        report = None if on_progress is None else partial(on_progress, spec.name)
        yield spec, run_task(spec, info, report), None


class RunControl:
    """A Ray actor between the driver and its tasks: workers' in-task progress reports, for the
    driver to drain, and the driver's word to stop.

    Workers send a few hundred bytes every `REPORT_INTERVAL_S` per task, fire-and-forget, and
    ask `stopping` every `STOP_POLL_S`, so either costs them nothing measurable."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, Done]] = []
        self.stopped = False

    def add(self, name: str, done: Done) -> None:
        self.reports.append((name, done))

    def drain(self) -> list[tuple[str, Done]]:
        reports, self.reports = self.reports, []
        return reports

    def stop(self) -> None:
        self.stopped = True

    def stopping(self) -> bool:
        return self.stopped


def run_task_on_node(
    spec: TaskSpec, info: TokenizerInfo, control: Any, report_progress: bool
) -> tuple[dict[str, Any], str]:
    """`run_task` in a Ray worker, also returning the id of the node that ran it; progress goes
    to the `RunControl` actor `control` when `report_progress`, which also says when to stop."""
    import ray

    next_poll = time.monotonic() + STOP_POLL_S

    def should_stop() -> bool:
        nonlocal next_poll
        if time.monotonic() < next_poll:
            return False
        next_poll = time.monotonic() + STOP_POLL_S
        return ray.get(control.stopping.remote())

    report = (lambda done: control.add.remote(spec.name, done)) if report_progress else None
    entry = run_task(spec, info, report, should_stop)
    return entry, ray.get_runtime_context().get_node_id()


def run_on_ray(
    pending: list[TaskSpec],
    info: TokenizerInfo,
    job: TokenizeJob,
    on_progress: Callable[[str, Done], None] | None = None,
):
    """Run tasks on Ray, at most `workers` in flight, yielding each as it finishes.

    On the way out (done, an error, Ctrl-C) tasks still running are cancelled and waited for,
    so that no worker writes into the store after the driver cleaned up."""
    if not job.ray_address:
        # A one-machine Ray then binds to 127.0.0.1 instead of the machine's network address
        # (read by Ray at import, so it must be set before the first `import ray`).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if any(s.task.url.startswith("memory://") for s in pending):
        raise MixerError(
            "memory:// inputs live in one process; pass workers=0 to run in-process",
            params=("workers",),
        )
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": "ERROR", "include_dashboard": False}
        if job.ray_address:
            kwargs["address"] = job.ray_address
        else:
            # "local" starts a fresh instance; a bare ray.init() would silently join any
            # cluster `ray start` left running on this machine, with other resources.
            kwargs["address"] = "local"
            kwargs["num_cpus"] = job.workers or os.cpu_count()
        ray.init(**kwargs)
    workers = job.workers or int(ray.cluster_resources().get("CPU", 1))
    # A task whose worker dies (OOM kill, lost node) is rerun from scratch by Ray: the shard is
    # only renamed into place when complete, so a retry can neither duplicate nor lose documents.
    remote = ray.remote(num_cpus=1, max_retries=3)(run_task_on_node)
    info_ref = ray.put(info)
    control = ray.remote(num_cpus=0)(RunControl).remote()
    queue = list(reversed(dispatch_order(pending)))
    in_flight: dict[Any, TaskSpec] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                spec = queue.pop()
                in_flight[remote.remote(spec, info_ref, control, on_progress is not None)] = spec
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=REPORT_INTERVAL_S)
            if on_progress is not None:
                for name, report in ray.get(control.drain.remote()):
                    on_progress(name, report)
            if not done:
                continue
            spec = in_flight.pop(done[0])
            try:
                entry, node = ray.get(done[0])
                yield spec, entry, node
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, MixerError):
                    raise e.cause from None
                raise
    finally:
        stop_tasks(list(in_flight), control)


def stop_tasks(running: list, control: Any) -> None:
    """Ask the `running` tasks to stop and wait for them (each removes its own temporaries);
    force-cancel only those still running after `CANCEL_WAIT_S`."""
    import ray

    if running:
        ray.get(control.stop.remote())
        _, stuck = ray.wait(running, num_returns=len(running), timeout=CANCEL_WAIT_S)
        if stuck:
            logger.warning(
                "%d Ray tasks did not stop in %.0f s; cancelling", len(stuck), CANCEL_WAIT_S
            )
            for ref in stuck:
                ray.cancel(ref, force=True)
            ray.wait(stuck, num_returns=len(stuck), timeout=CANCEL_WAIT_S)
    ray.kill(control)
