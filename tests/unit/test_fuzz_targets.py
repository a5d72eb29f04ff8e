"""The fuzz targets without atheris: each on its seeds and on hostile inputs raises only
the exceptions it declares (``make fuzz`` runs them coverage-guided, for millions of
inputs; this keeps the harness and its seeds honest in ``make test``)."""

from __future__ import annotations

import pytest

from fuzz.seeds import SEEDS, seeds
from fuzz.targets import SEP, TARGETS, Target

HOSTILE = [
    b"",
    b"\x00",
    b"\x00" * 4096,
    b"\xff" * 512,  # huge counts and lengths, invalid UTF-8
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint past 64 bits
    b"\x0a\xff\xff\xff\xff\x0f",  # a field claiming 4 GiB
    b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xed\xa0\x80",  # invalid UTF-8, a surrogate
    b"[" * 5000,  # deeply nested
    b"{" * 5000,
    b"a = [" * 2000,
    b"allow if allowed-matches(" * 50,
    b"9" * 5000,
    b"%00%ff%" * 100,
    SEP * 64,
    b"\r\n" * 2000,
]


def _run(target: Target, data: bytes) -> None:
    try:
        target.run(data)
    except target.expected:
        pass
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        pytest.fail(f"{target.name} raised {e!r} on {data[:300]!r}")


def test_every_target_has_seeds() -> None:
    assert set(SEEDS) == set(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_run_and_most_are_taken(name: str) -> None:
    target = TARGETS[name]
    found = seeds(name)
    taken = 0
    for data in found:
        try:
            target.run(data)
            taken += 1
        except target.expected:
            pass
        except Exception as e:  # noqa: BLE001 - any other exception is the finding
            pytest.fail(f"{name} raised {e!r} on its seed {data[:300]!r}")
    # Seeds the parser refuses outright would start the fuzzer at its front door.
    assert taken >= len(found) // 2, f"{name}: only {taken} of {len(found)} seeds are taken"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_hostile_inputs_get_only_the_declared_errors(name: str) -> None:
    target = TARGETS[name]
    for data in HOSTILE:
        _run(target, data)
        # with each first byte (some targets pick a mode by it)
        for first in range(4):
            _run(target, bytes([first]) + data)
