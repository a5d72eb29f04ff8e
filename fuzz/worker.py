"""One fuzz target under atheris: ``python -m fuzz.worker TARGET [libFuzzer flags] CORPUS``.

Run by ``python -m fuzz``, one process per target. The code under test is imported
inside ``atheris.instrument_imports`` so libFuzzer sees its branches; an exception the
target does not expect propagates, and atheris reports it with the input as a crash.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import atheris

#: Packages whose branches guide the fuzzer: the product, and the parsers it hands
#: input to (TOML, Casbin's model, wcmatch's globs, Starlette's query strings).
INSTRUMENTED = ["agent", "collector", "baomi", "fuzz", "tomllib", "casbin", "wcmatch", "starlette"]


def main() -> None:
    """Fuzz the target named by the first argument; the others go to libFuzzer."""
    name = sys.argv[1]
    # The product logs refusals (a policy rule not enforced, ...): millions of lines.
    logging.disable(logging.CRITICAL)
    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz import targets  # noqa: PLC0415 - imported under instrumentation

    target = targets.TARGETS[name]
    expected = target.expected

    def test_one_input(data: bytes) -> None:
        with contextlib.suppress(*expected):
            target.run(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
