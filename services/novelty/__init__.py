"""The novelty service: scores embedded results against the reference library, raises alerts."""

NAME = "novelty"
"""The service's one name: consumer group, metric label, DLQ tag, metrics port, logger."""
