"""The farm emulator: publishes generated or replayed results, as a simulation farm would."""

NAME = "simfarm"
"""The producer's one name: client id, metrics port, logger."""
