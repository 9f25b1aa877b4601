"""Prometheus metrics with vLLM's names under a `ladle:` prefix, in a registry of the app's own (so two apps
in one process, as in tests, never clash). Engine gauges and counters are read from each engine's published
stats at scrape time; latency histograms are fed as requests finish."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ladle.engine.async_engine import EngineStats
from ladle.outputs import RequestOutput

# Latency buckets (seconds), from vLLM's, wide enough for CPU runs of a big model.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
_TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

StatsSource = Callable[[], Iterable[tuple[str, EngineStats]]]


class _EngineCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"ladle:{name}", doc, labels=["model_name"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"ladle:{name}", doc, labels=["model_name"])

        running = gauge("num_requests_running", "Requests in the running batch.")
        waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        kv = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).")
        queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        preemptions = counter("num_preemptions", "Requests preempted for lack of KV blocks.")
        prompt = counter("prompt_tokens", "Prompt tokens admitted.")
        generation = counter("generation_tokens", "Tokens generated.")
        finished = CounterMetricFamily(
            "ladle:request_success",
            "Finished requests by finish reason.",
            labels=["model_name", "finished_reason"],
        )
        for model, s in self.source():
            running.add_metric([model], s.num_running)
            waiting.add_metric([model], s.num_waiting)
            kv.add_metric([model], s.kv_cache_usage)
            queries.add_metric([model], s.prefix_cache_queries)
            hits.add_metric([model], s.prefix_cache_hits)
            preemptions.add_metric([model], s.num_preemptions)
            prompt.add_metric([model], s.prompt_tokens)
            generation.add_metric([model], s.generation_tokens)
            for reason, count in s.finished_by_reason.items():
                finished.add_metric([model, reason], count)
        yield from (running, waiting, kv, queries, hits, preemptions, prompt, generation, finished)


class ServerMetrics:
    def __init__(self, stats_source: StatsSource) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats_source))

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"ladle:{name}", doc, ["model_name"], buckets=buckets, registry=self.registry)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.tpot = histogram(
            "time_per_output_token_seconds", "Mean time per output token after the first.", _TPOT_BUCKETS
        )
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to finish.", _E2E_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Arrival to first scheduled.", _E2E_BUCKETS)

    def observe_finished(self, model: str, output: RequestOutput) -> None:
        m = output.metrics
        if m is None or m.finished_time is None:
            return
        if m.first_scheduled_time is not None:
            self.queue.labels(model).observe(max(0.0, m.first_scheduled_time - m.arrival_time))
        if m.first_token_time is not None:
            self.ttft.labels(model).observe(max(0.0, m.first_token_time - m.arrival_time))
            num_tokens = max((len(o.token_ids) for o in output.outputs), default=0)
            if num_tokens > 1:
                self.tpot.labels(model).observe((m.finished_time - m.first_token_time) / (num_tokens - 1))
        self.e2e.labels(model).observe(max(0.0, m.finished_time - m.arrival_time))

    def render(self) -> bytes:
        return generate_latest(self.registry)
