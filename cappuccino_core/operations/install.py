"""`cappuccino install` / `make install`: the package in a virtualenv under a prefix, the units
where locally installed software puts its units, the example configuration where none exists,
the service user, and `cappuccino` on the PATH.

The units are the vendor's: they go to /usr/local/lib/systemd/system and are replaced on every
install. The operator's changes live in drop-ins under /etc/systemd/system/<unit>.d/ (e.g.
`systemctl edit cappuccino-paper-trader`), which install never touches, so an upgrade keeps
them. An operator's configuration is never overwritten either: an example file is copied only
where no file exists. `uninstall` disables and stops the units, then removes them, the
`cappuccino` link and the prefix; configuration, drop-ins and state stay.

`--root DIR` stages everything under DIR instead of / (packaging, tests).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .units import render_units, write_units

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"  # what a server runs: every version and file hash CI tested
USER = "cappuccino"
VENDOR_UNITS = "/usr/local/lib/systemd/system"  # systemd's unit path for local packages
OPERATOR_UNITS = "/etc/systemd/system"           # the operator's drop-ins: never touched
BIN_LINK = "/usr/local/bin/cappuccino"
HIDDEN_HOMES = (Path("/root"), Path("/home"))


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def is_within(path: Path, folders) -> bool:
    return any(path == f or f in path.parents for f in folders)


def check_interpreter(home: Path) -> None:
    """The services cannot run an interpreter the units hide from them (ProtectHome=yes)."""
    if is_within(home, HIDDEN_HOMES):
        raise SystemExit(f"the Python in {home} lives under /root or /home, which the units "
                         "hide from the services (ProtectHome=yes): install with a system "
                         "Python, e.g. make install PYTHON=/usr/bin/python3")


def install_venv(target: Path) -> None:
    """A virtualenv at `target` with exactly the versions and files CI tested (the lock, hashes
    checked; the CPU build of torch among them), then the package itself, not editable: the
    services never run the checkout."""
    if not LOCK.is_file():
        raise SystemExit(f"{LOCK} not found: `cappuccino install` runs from a checkout of the "
                         "source (make install)")
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    python = str(target / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--require-hashes", "-r", str(LOCK)], check=True)
    subprocess.run(pip + ["--no-deps", "--no-build-isolation", str(REPO)], check=True)
    subprocess.run([python, "-m", "pip", "check"], check=True)


def _protect(path: Path) -> None:
    """0640, owned by root and the service's group where that group exists."""
    import grp
    import os
    path.chmod(0o640)
    try:
        os.chown(path, 0, grp.getgrnam(USER).gr_gid)
    except (KeyError, PermissionError):
        pass  # no such group yet (staged install) or not root: the mode still protects it


def install(prefix: str = "/opt/cappuccino", root: str = "/", venv: bool = True,
            user: bool = True, systemd_reload: bool = True, log=print) -> list[str]:
    """Returns what it did, one line each."""
    root_p = Path(root)
    done: list[str] = []
    if venv and root_p == Path("/"):
        check_interpreter(Path(sys.base_prefix).resolve())
    if venv:
        target = _under(root_p, prefix) / "venv"
        install_venv(target)
        done.append(f"virtualenv {target} with cappuccino (non-editable, from {LOCK.name})")
    units_dir = _under(root_p, VENDOR_UNITS)
    _remove_units(units_dir)  # an upgrade drops units a release no longer ships
    done += _retire_old_copies(_under(root_p, OPERATOR_UNITS), prefix)
    for path in write_units(units_dir, prefix):
        done.append(f"unit {path}")
    link = _under(root_p, BIN_LINK)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(prefix) / "venv" / "bin" / "cappuccino")
    done.append(f"{link} -> {prefix}/venv/bin/cappuccino")
    if user and root_p == Path("/"):
        exists = subprocess.run(["id", "-u", USER], capture_output=True).returncode == 0
        if not exists:
            subprocess.run(["useradd", "--system", "--user-group", "--home-dir",
                            "/var/lib/cappuccino", "--shell", "/usr/sbin/nologin", USER],
                           check=True)
            done.append(f"system user {USER}")
    etc = _under(root_p, "/etc/cappuccino")
    (etc / "credentials").mkdir(parents=True, exist_ok=True)
    (etc / "credentials").chmod(0o700)
    for example in sorted((REPO / "config").glob("*.yaml")):
        dest = etc / example.name
        if dest.exists():
            done.append(f"kept the operator's {dest}")
        else:
            shutil.copy2(example, dest)
            _protect(dest)  # it will hold the storage password: root writes, the service reads
            done.append(f"example config {dest} (0640 root:{USER})")
    if systemd_reload and root_p == Path("/") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        done.append("systemctl daemon-reload")
    for line in done:
        log(line)
    return done


def _retire_old_copies(etc_units: Path, prefix: str) -> list[str]:
    """Releases before this one wrote full unit files into /etc/systemd/system, where they
    would shadow the vendor units: they are renamed aside (`.pre-vendor`, which systemd does
    not load), never deleted; changes belong in drop-ins."""
    done = []
    for name in render_units(prefix):
        old = etc_units / name
        if "/" not in name and old.is_file() and not old.is_symlink():
            old.rename(old.with_name(old.name + ".pre-vendor"))
            done.append(f"moved the old unit copy {old} aside ({old.name}.pre-vendor): put "
                        "your changes in a drop-in (systemctl edit)")
    return done


def _remove_units(units_dir: Path) -> list[Path]:
    """Our unit files and drop-ins in the vendor directory (nothing of the operator's)."""
    removed = []
    for path in sorted(units_dir.glob("cappuccino*"), reverse=True):
        if path.is_dir():
            for f in path.iterdir():
                f.unlink()
                removed.append(f)
            path.rmdir()
        else:
            path.unlink()
            removed.append(path)
    return removed


def uninstall(prefix: str = "/opt/cappuccino", root: str = "/", log=print) -> list[str]:
    """Disable and stop the units first (no dangling .wants links, nothing left running), then
    remove them, the link and the prefix."""
    root_p = Path(root)
    done = []
    live = root_p == Path("/") and shutil.which("systemctl")
    if live:
        names = [n for n in render_units(prefix) if "/" not in n and "@." not in n]
        subprocess.run(["systemctl", "disable", "--now", *names], check=False)
        subprocess.run(["systemctl", "stop", "cappuccino-train@*.service"], check=False)
        done.append("disabled and stopped " + ", ".join(names))
    for path in _remove_units(_under(root_p, VENDOR_UNITS)):
        done.append(f"removed {path}")
    link = _under(root_p, BIN_LINK)
    if link.is_symlink():
        link.unlink()
        done.append(f"removed {link}")
    target = _under(root_p, prefix)
    if target.exists():
        shutil.rmtree(target)
        done.append(f"removed {target}")
    if live:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    done.append("kept /etc/cappuccino, /var/lib/cappuccino and the drop-ins in "
                f"{OPERATOR_UNITS} (configuration, state, your changes)")
    for line in done:
        log(line)
    return done
