"""Request counters and latency histograms of the search service, rendered in the Prometheus text
exposition format (version 0.0.4) by hand: a few series need no client library."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

__all__ = ["LATENCY_BUCKETS", "ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**kv: Any) -> str:
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in kv.items())
    return "{" + body + "}"


class ServiceMetrics:
    """Thread-safe counters: requests by route, method and status; latency by route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request (``route`` is the route template, never the raw path)."""
        with self._lock:
            self._requests[(route, method, status)] += 1
            b = self._buckets[route]
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    b[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def render(self, gauges: dict[str, tuple[str, float | None]]) -> str:
        """The exposition text; ``gauges`` maps a metric name to ``(help, value)`` (``None`` is left out;
        a name ending in ``_total`` is typed as a counter)."""
        out = ["# HELP regionrank_api_requests_total HTTP requests answered, by route, method and status.",
               "# TYPE regionrank_api_requests_total counter"]
        with self._lock:
            for (route, method, status), n in sorted(self._requests.items()):
                out.append(f"regionrank_api_requests_total{_labels(route=route, method=method, status=status)} {n}")
            out += ["# HELP regionrank_api_request_seconds Request latency, by route.",
                    "# TYPE regionrank_api_request_seconds histogram"]
            for route in sorted(self._count):
                for le, n in zip(LATENCY_BUCKETS, self._buckets[route], strict=True):
                    out.append(f"regionrank_api_request_seconds_bucket{_labels(route=route, le=le)} {n}")
                out.append(f"regionrank_api_request_seconds_bucket{_labels(route=route, le='+Inf')} {self._count[route]}")
                out.append(f"regionrank_api_request_seconds_sum{_labels(route=route)} {self._sum[route]:.6f}")
                out.append(f"regionrank_api_request_seconds_count{_labels(route=route)} {self._count[route]}")
        for name, (help_text, value) in gauges.items():
            if value is None:
                continue
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
