"""The align service: registers each unique result's print onto its mask frame."""

NAME = "align"
"""The service's one name: consumer group, metric label, DLQ tag, metrics port."""
