"""Half-open integer ranges [lo, hi): merging and subtracting (bar indices, nanoseconds)."""

from __future__ import annotations

Range = tuple[int, int]


def merge(ranges: list[Range]) -> list[Range]:
    """Sorted, with overlapping or touching ranges joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def subtract(ranges: list[Range], cut: Range) -> list[Range]:
    """`ranges` without the part inside `cut`."""
    out = []
    for lo, hi in ranges:
        if hi <= cut[0] or lo >= cut[1]:
            out.append((lo, hi))
            continue
        if lo < cut[0]:
            out.append((lo, cut[0]))
        if hi > cut[1]:
            out.append((cut[1], hi))
    return out


def uncovered(want: Range, covered: list[Range]) -> list[Range]:
    """The parts of `want` that no range in `covered` holds."""
    gaps = [want]
    for c in covered:
        gaps = subtract(gaps, c)
    return gaps
