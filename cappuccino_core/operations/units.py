"""The systemd unit files in `units/`, rendered for an install prefix.

The files use `@PREFIX@` for the install prefix (the virtualenv is `@PREFIX@/venv`). Rendering
is the only change `make install` makes to them: they are installed as they are otherwise.
Besides the units, `cappuccino-.service.d/` holds the drop-in every cappuccino service shares
(its user, directories and sandbox).
"""

from __future__ import annotations

from pathlib import Path

from ..common.files import atomic_write_text

UNITS_DIR = Path(__file__).resolve().parents[2] / "units"


def render_units(prefix: str | Path, python: str | Path | None = None,
                 source: Path = UNITS_DIR) -> dict[str, str]:
    """{path relative to the unit directory: text} with the prefix filled in; `python`
    overrides the venv's interpreter (tests point it at the running one)."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} not found: install from a source checkout "
                                "(make install)")
    out = {}
    for path in sorted(source.rglob("*")):
        if path.suffix not in {".service", ".timer", ".path", ".target", ".conf"}:
            continue
        text = path.read_text()
        if python is not None:
            text = text.replace("@PREFIX@/venv/bin/python", str(python))
        out[path.relative_to(source).as_posix()] = text.replace("@PREFIX@", str(prefix))
    return out


def write_units(directory: str | Path, prefix: str | Path, python=None) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_units(prefix, python).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, text))
    return written
