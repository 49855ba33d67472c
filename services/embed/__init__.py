"""The embed service: turns each aligned (mask, print) pair into an L2-normalised vector."""

NAME = "embed"
"""The service's one name: consumer group, metric label, DLQ tag, metrics port."""
