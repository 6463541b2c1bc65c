"""appliance-exporter: Prometheus metrics and alerts from the local daemons' control sockets
(docs/monitoring.md)."""
