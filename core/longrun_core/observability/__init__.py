"""Metrics and structured logs shared by the server and the workers
(docs/observability.md). Nothing here touches a global registry: each
process builds its own `prometheus_client.CollectorRegistry` in its
composition root and passes it down."""
