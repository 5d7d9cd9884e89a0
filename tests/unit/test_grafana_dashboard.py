"""deploy/grafana/longrun-dashboard.json parses, and every metric and label
its queries use is one the server or the workers export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from longrun_core.observability.queue_depth import QueueDepth, QueueDepthGauges, QueueReadyGauges
from longrun_core.store import OperationStore
from longrun_server.metrics import ServerMetrics
from longrun_worker.metrics import PrometheusWorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "longrun-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}
#: Labels Prometheus adds (target labels) or histograms carry.
EXTERNAL_LABELS = {"job", "instance", "le"}


def exported() -> tuple[dict[str, set[str]], set[str]]:
    """Every sample name the processes can export, with its label names."""
    registries = [CollectorRegistry() for _ in range(4)]
    ServerMetrics(registries[0])
    PrometheusWorkerMetrics(registries[1])

    async def read() -> QueueDepth:
        return QueueDepth(0, 0.0)

    QueueDepthGauges(registries[2], read)
    QueueReadyGauges(registries[3], cast(OperationStore, None))  # the store is read on scrape
    names: dict[str, set[str]] = {}
    for registry in registries:
        for family in registry.collect():
            labels = set(getattr(registry._names_to_collectors[family.name], "_labelnames", ()))
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labels | EXTERNAL_LABELS
    all_labels = set().union(*names.values())
    return names, all_labels


def queries(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            promql = key in ("expr", "definition") or (key == "query" and "refId" in node)
            if promql and isinstance(value, str):
                found.append(value)
            else:
                found += queries(value)
    elif isinstance(node, list):
        for item in node:
            found += queries(item)
    return found


def test_the_dashboard_parses_and_has_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in graphs)


def test_every_query_uses_exported_metrics_and_labels() -> None:
    names, _ = exported()
    used: set[str] = set()
    for query in queries(json.loads(DASHBOARD.read_text())):
        metrics = re.findall(r"\blongrun_[a-z_]+", query)
        assert metrics, f"a query without a longrun metric: {query}"
        for metric in metrics:
            assert metric in names, f"{metric} is not exported (in {query})"
            used.add(metric)
            for selector in re.findall(rf"{metric}\{{([^}}]*)\}}", query):
                for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
                    assert label in names[metric], f"{metric} has no label {label!r}"
        for grouping in re.findall(r"by \(([^)]*)\)", query):
            for label in (word.strip() for word in grouping.split(",")):
                assert all(label in names[m] for m in metrics), f"{label!r} in {query}"
    # Every family is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families == shown, f"not on the dashboard: {sorted(families - shown)}"
