"""The contracts' building blocks live in ``shared.contract_types`` and are importable from
``shared.contracts`` too, as the very same objects."""

from __future__ import annotations

import shared.contract_types as contract_types
import shared.contracts as contracts


def test_every_building_block_is_reexported_by_contracts() -> None:
    public = [name for name in vars(contract_types) if not name.startswith("_")]
    defined_here = [
        name
        for name in public
        if getattr(getattr(contract_types, name), "__module__", None) == contract_types.__name__
    ]
    assert {"Contract", "ImageRef", "Vector", "Hashes", "Transform", "Neighbour", "utcnow"} <= set(
        defined_here
    )
    for name in [*defined_here, "LabelValue", "Labels", "ResultId", "WIRE_CONTEXT", "read_tolerant"]:
        assert getattr(contracts, name) is getattr(contract_types, name), name


def test_records_build_on_the_same_base() -> None:
    assert issubclass(contracts.Record, contract_types.Contract)
    assert contracts.LibraryEntry.model_fields["vector"].annotation == contract_types.Vector | None
