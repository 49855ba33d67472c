"""The dedupe service: recognises re-simulations of results seen before (exact and near duplicates)."""

NAME = "dedupe"
"""The service's one name: consumer group, metric label, Redis key prefix, DLQ tag, metrics port."""
