"""What /metrics serves: this process's registry, or, with several workers, every worker's
multiprocess files (only the series the configuration still names) plus each worker's
process_* figures read from /proc. Reads only; the metrics themselves are in metrics.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, ProcessCollector, multiprocess
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy import metrics
from proxy.workers import MULTIPROC_ENV, WORKER_ENV


def registry() -> CollectorRegistry:
    """One process: the default registry (process_* and python_gc_* included). Several
    workers: a registry built per scrape over the files and /proc."""
    if MULTIPROC_ENV not in os.environ:
        return REGISTRY
    aggregated = CollectorRegistry()
    aggregated.register(CurrentSeries(multiprocess.MultiProcessCollector(None)))  # type: ignore[no-untyped-call]
    aggregated.register(WorkerProcesses())
    return aggregated


def current_names(metric: MetricWrapperBase, labels: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The values of `labels` on the series this process has now."""
    [family] = metric.collect()
    return {tuple(sample.labels[name] for name in labels) for sample in family.samples}


class CurrentSeries(Collector):
    """The workers' files without the series of a certificate, CRL or issuer this process no
    longer has: Gauge.clear() and remove() cannot reach into the files, which keep every
    series a worker (even a dead one) ever wrote. Every worker creates the series of what it
    has at start and on reload, so this process's own set is the set to serve."""

    def __init__(self, files: Collector) -> None:
        self._files = files

    def collect(self) -> Iterable[Metric]:
        retiring = {
            next(iter(metric.describe())).name: (labels, current_names(metric, labels))
            for metric, labels in metrics.RETIRING_LABELS.items()
        }
        for family in self._files.collect():
            if family.name in retiring:
                labels, kept = retiring[family.name]
                family.samples = [
                    s for s in family.samples if tuple(s.labels.get(n, "") for n in labels) in kept
                ]
            yield family


def _children(parent: int) -> list[int]:
    """The direct children of `parent`: the kernel's list when it keeps one, else a scan."""
    with contextlib.suppress(OSError, ValueError):
        listed = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        return [int(pid) for pid in listed.split()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Field 4 of stat, after the command name in parentheses (which may hold spaces).
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def worker_pids() -> list[int]:
    """The supervisor (this worker's parent) and every worker it runs; this process alone
    when it was not started by a supervisor."""
    if WORKER_ENV not in os.environ:
        return [os.getpid()]
    supervisor = os.getppid()
    return [supervisor, *sorted(_children(supervisor))]


class WorkerProcesses(Collector):
    """process_* (CPU, memory, open files, start time) of the supervisor and each worker, one
    series per process with a `pid` label: prometheus-client's multiprocess mode has none,
    and a sum over live workers would go backwards when one is restarted."""

    def __init__(self, pids: Iterable[int] | None = None) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self._pids if self._pids is not None else worker_pids():
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in reader.collect():
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={**sample.labels, "pid": str(pid)}))
        yield from merged.values()
