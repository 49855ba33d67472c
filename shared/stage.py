"""The stage protocol: what a service offers the runtime, free of any Kafka client.

A stage names its input (topic and contract), turns a batch of decoded inputs into
one :data:`ItemResult` per input (the :class:`Output` messages to produce, or the
:class:`~shared.errors.InputError` that rejects the input), and may do periodic work
between batches (:meth:`Stage.tick`) and release what it holds at the end
(:meth:`Stage.close`). The runtime (:mod:`shared.runtime`) owns everything else:
polling, decoding, producing, committing, the DLQ. Stages never touch offsets.

Services' cores import this module, never the runtime, so a pure core (and its unit
tests) does not load the Kafka client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.contracts import Contract
from shared.errors import InputError


@dataclass(frozen=True)
class Output:
    """One message a stage wants produced."""

    topic: str
    value: Contract
    key: str


ItemResult = Sequence[Output] | InputError
"""One input's verdict: the messages it produces (possibly none), or why it is rejected."""


class Stage(Protocol):
    """What a service offers the runtime."""

    @property
    def name(self) -> str: ...

    @property
    def input_topic(self) -> str: ...

    @property
    def input_model(self) -> type[Contract]: ...

    def process_batch(self, items: Sequence[Any]) -> Sequence[ItemResult]:
        """One entry per input, in order: its outputs, or the InputError that rejects it."""
        ...

    def tick(self) -> None:
        """Periodic work, called by the runtime once per loop before it polls (may be a no-op)."""
        ...

    def close(self) -> None:
        """Release what the stage holds; called once when the runtime stops."""
        ...


class StageBase:
    """No-op :meth:`~Stage.tick` and :meth:`~Stage.close` for stages that need neither."""

    def tick(self) -> None:
        return None

    def close(self) -> None:
        return None
