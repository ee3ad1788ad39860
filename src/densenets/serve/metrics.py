"""Counters the server keeps, written in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # cumulative, as Prometheus writes them
        self.total, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {n}' for b, n in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.count}"]


class Metrics:
    """Thread-safe: the event loop records requests, the batching worker records batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.latency: dict[str, Histogram] = {}
        self.errors: Counter[str] = Counter()
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes.observe(size)
            self.batch_seconds.observe(seconds)

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines = ["# HELP densenets_requests_total HTTP requests answered, by method, route and status.",
                     "# TYPE densenets_requests_total counter"]  # fmt: skip
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'densenets_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP densenets_request_seconds Time to answer a request, by route.",
                      "# TYPE densenets_request_seconds histogram"]  # fmt: skip
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("densenets_request_seconds", f'route="{route}"')
            lines += ["# HELP densenets_batch_size Images per forward pass of the batching worker.",
                      "# TYPE densenets_batch_size histogram", *self.batch_sizes.lines("densenets_batch_size"),
                      "# HELP densenets_batch_seconds Time of one forward pass.",
                      "# TYPE densenets_batch_seconds histogram", *self.batch_seconds.lines("densenets_batch_seconds"),
                      "# HELP densenets_queue_depth Images submitted and not yet run.",
                      "# TYPE densenets_queue_depth gauge", f"densenets_queue_depth {queue_depth}",
                      "# HELP densenets_errors_total Refused requests, by kind.",
                      "# TYPE densenets_errors_total counter"]  # fmt: skip
            lines += [f'densenets_errors_total{{kind="{kind}"}} {n}' for kind, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"
