"""Prometheus exposition of an Aggregate: the Collector and the HTTP server."""
