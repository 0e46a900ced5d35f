"""`cappuccino install` / `make install`: the package in a virtualenv under a prefix, the units
in /etc/systemd/system, the example configuration where none exists, and the service user.

`--root DIR` stages everything under DIR instead of / (packaging, tests). An operator's
configuration is never overwritten: an example file is copied only where no file exists.
`uninstall` removes the units and the prefix, and leaves configuration and state alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .units import render_units, write_units

REPO = Path(__file__).resolve().parents[1]
USER = "cappuccino"
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
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["-r", str(REPO / "requirements-torch.txt")],
                       check=True)  # the CPU build first
        subprocess.run(pip + [str(REPO)], check=True)
        done.append(f"virtualenv {target} with cappuccino")
    units_dir = _under(root_p, "/etc/systemd/system")
    for path in write_units(units_dir, prefix):
        done.append(f"unit {path}")
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


def uninstall(prefix: str = "/opt/cappuccino", root: str = "/", log=print) -> list[str]:
    root_p = Path(root)
    done = []
    units_dir = _under(root_p, "/etc/systemd/system")
    for name in render_units(prefix):
        path = units_dir / name
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
            if path.parent != units_dir and not any(path.parent.iterdir()):
                path.parent.rmdir()  # a drop-in directory of ours, now empty
    target = _under(root_p, prefix)
    if target.exists():
        shutil.rmtree(target)
        done.append(f"removed {target}")
    done.append("kept /etc/cappuccino and /var/lib/cappuccino (configuration and state)")
    for line in done:
        log(line)
    return done
