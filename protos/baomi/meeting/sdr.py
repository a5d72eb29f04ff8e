"""SDR sweeps: ``rtl_power`` CSV against the room's baseline (C5 jammer, C10 carriers).

``rtl_power`` writes one row per hop: ``date, time, Hz low, Hz high, Hz step, samples,
dB, dB, ...``; bin *i* of a row is at ``Hz low + i * Hz step``. A sweep repeated over
time gives several rows per hop; each bin keeps its highest reading, since a
transmitter that keys up once during the sweep is still a transmitter.

The baseline is a sweep of the same room taken with the jammer off and nobody in it,
calibrated on site. C10 fails on a bin in 470-790 MHz (wireless microphones' band in
China) that rises ``margin`` dB above the baseline; C5 fails on a required jammer band
whose mean power is not ``margin`` dB above the baseline's.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WIRELESS_MIC_BAND = (470.0, 790.0)  # MHz
MAX_BYTES = 64 * 1024 * 1024  # of a sweep file read: hours of rtl_power at 1 MHz bins
MAX_REPORTED = 5  # carriers named in evidence
_FIXED_COLUMNS = 6  # date, time, Hz low, Hz high, Hz step, samples


class SweepError(ValueError):
    """A sweep file that is not ``rtl_power`` CSV: file, line and reason."""

    def __init__(self, file: str | Path, line: int, reason: str) -> None:
        self.file, self.line, self.reason = str(file), line, reason
        super().__init__(f"{file}:{line}: {reason}")


@dataclass(frozen=True, slots=True)
class Sweep:
    """Power per frequency bin (Hz, rounded) in dB, highest reading kept."""

    bins: dict[int, float]
    path: str

    def band(self, low_mhz: float, high_mhz: float) -> list[tuple[int, float]]:
        """The bins inside ``[low, high]`` MHz, by frequency."""
        lo, hi = low_mhz * 1e6, high_mhz * 1e6
        return sorted((f, db) for f, db in self.bins.items() if lo <= f <= hi)


def parse_sweep(path: Path) -> Sweep:
    """Read an ``rtl_power`` CSV; SweepError naming the first bad line."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SweepError(path, 0, f"cannot read: {e}") from e
    if len(raw) > MAX_BYTES:
        raise SweepError(path, 0, f"larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise SweepError(path, text_line(raw, e.start), "not ASCII: not rtl_power CSV") from e
    bins: dict[int, float] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        _add_row(path, number, row, bins)
    if not bins:
        raise SweepError(path, 1, "no readings: not rtl_power CSV")
    return Sweep(bins, str(path))


def text_line(raw: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset``."""
    return raw.count(b"\n", 0, offset) + 1


def _add_row(path: Path, number: int, row: list[str], bins: dict[int, float]) -> None:
    if len(row) <= _FIXED_COLUMNS:
        raise SweepError(path, number, f"{len(row)} columns; rtl_power rows have at least 7")
    try:
        low, high, step = (float(c) for c in row[2:5])
        values = [float(c) for c in row[_FIXED_COLUMNS:]]
    except ValueError as e:
        raise SweepError(path, number, f"not a number: {e}") from e
    if not (0 < low < high and step > 0):
        raise SweepError(path, number, "needs 0 < Hz low < Hz high and Hz step > 0")
    for i, db in enumerate(values):
        if not math.isfinite(db):  # NaN or inf: a broken dongle or a hand-edited file
            raise SweepError(path, number, f"reading {i + 1} is not a finite dB value")
        frequency = round(low + i * step)
        if frequency > high + step:
            raise SweepError(path, number, "more readings than Hz low..high at Hz step hold")
        bins[frequency] = max(db, bins.get(frequency, db))


@dataclass(frozen=True, slots=True)
class Finding:
    """An item's result from a sweep."""

    result: str  # pass, fail, unknown
    evidence: str


def new_carriers(
    sweep: Sweep,
    baseline: Sweep,
    margin_db: float,
    band: tuple[float, float] = WIRELESS_MIC_BAND,
) -> Finding:
    """C10: bins in ``band`` at least ``margin_db`` above the baseline."""
    measured = sweep.band(*band)
    if not measured:
        return Finding("unknown", f"the sweep does not cover {band[0]:g}-{band[1]:g} MHz")
    found = []
    compared = 0
    for frequency, db in measured:
        reference = baseline.bins.get(frequency)
        if reference is None:
            continue
        compared += 1
        if db - reference >= margin_db:
            found.append((frequency, db, db - reference))
    if not compared:
        return Finding("unknown", "the baseline has no bins at the sweep's frequencies")
    if not found:
        return Finding(
            "pass",
            f"no carrier ≥{margin_db:g} dB above baseline in {band[0]:g}-{band[1]:g} MHz "
            f"({compared} bins)",
        )
    shown = ", ".join(f"{f / 1e6:.3f} MHz +{rise:.1f} dB" for f, _, rise in found[:MAX_REPORTED])
    more = f" and {len(found) - MAX_REPORTED} more" if len(found) > MAX_REPORTED else ""
    return Finding("fail", f"new carrier above baseline: {shown}{more}")


def jammer_coverage(
    sweep: Sweep, baseline: Sweep, margin_db: float, bands: Iterable[tuple[float, float]]
) -> Finding:
    """C5: every required band's mean power raised ``margin_db`` over the baseline."""
    bands = list(bands)
    if not bands:
        return Finding("unknown", "the room lists no jammer_bands to verify")
    weak: list[str] = []
    missing: list[str] = []
    good: list[str] = []
    for low, high in bands:
        pairs = [(db, baseline.bins[f]) for f, db in sweep.band(low, high) if f in baseline.bins]
        name = f"{low:g}-{high:g} MHz"
        if not pairs:
            missing.append(name)
            continue
        rise = sum(db - ref for db, ref in pairs) / len(pairs)
        (good if rise >= margin_db else weak).append(f"{name} +{rise:.1f} dB")
    if weak:
        return Finding("fail", f"jammer band not raised by {margin_db:g} dB: " + ", ".join(weak))
    if missing:
        return Finding("unknown", "the sweep or baseline does not cover " + ", ".join(missing))
    return Finding("pass", "jammer raises " + ", ".join(good))
