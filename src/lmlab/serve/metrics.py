"""What `lmlab serve` reports at /metrics, in Prometheus' text format (through `prometheus_client`).

Each app has its own registry, so several servers (or tests) in one process do not share counters.
"""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Time to first token spans queueing and prefill (up to seconds under load); per-token latency is one step.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmlab_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("lmlab_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.completion_tokens = Counter("lmlab_completion_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("lmlab_time_to_first_token_seconds", "From a request's arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lmlab_time_per_output_token_seconds", "Between two tokens of one choice",
                             buckets=ITL_BUCKETS, registry=r)
        self.running = Gauge("lmlab_requests_running", "Requests whose rows are in the batch", registry=r)
        self.waiting = Gauge("lmlab_requests_waiting", "Requests queued for the batch", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    async def page(self) -> Response:
        """GET /metrics: Prometheus' text exposition format."""
        return Response(self.text(), media_type="text/plain; version=0.0.4; charset=utf-8")
