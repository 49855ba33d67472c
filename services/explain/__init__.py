"""The explain service: renders each alert beside its nearest known neighbours."""

NAME = "explain"
"""The service's one name: consumer group, metric label, DLQ tag, metrics port."""
