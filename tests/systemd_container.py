"""A throwaway systemd container for the fault tests (DESIGN.md's safety rule).

`systemd-nspawn --volatile=yes -D / --boot` boots the host's /usr on a tmpfs root: nothing the
container writes reaches the host, and systemd never runs on the host's own root. The checkout
(with its virtualenv) and the Python installation the virtualenv links to are bound in
read-only; the container shares the host's network, so PostgreSQL on 127.0.0.1 is reachable.
Commands run inside with `nsenter`; the container is stopped by SIGTERM to its own
systemd-nspawn process, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cappuccino_core.operations.install import HIDDEN_HOMES, is_within

REPO = Path(__file__).resolve().parents[1]
# What a service must be able to read: the checkout and the interpreter behind its virtualenv.
PYTHON_HOME = Path(sys.base_prefix).resolve()


def why_not_available() -> str | None:
    """None where the container can run here, else the reason."""
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (package systemd-container)"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if not (REPO / ".venv" / "bin" / "python").exists():
        return f"no virtualenv at {REPO / '.venv'} (make venv)"
    return None


class Container:
    def __init__(self, log_path: Path):
        self.name = f"cappuccino-test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.python = ""  # the installed virtualenv's interpreter, once installed

    # --- lifecycle -----------------------------------------------------------------------

    def boot(self, timeout: float = 120) -> None:
        binds = [f"--bind-ro={p}" for p in sorted({REPO, PYTHON_HOME})]
        log = open(self.log_path, "w")
        # --keep-unit/--register=no: there is no host system bus to register with
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--keep-unit", "--register=no", "--volatile=yes", "-D", "/",
             "--boot", f"--machine={self.name}", *binds, "--", "systemd.firstboot=off"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            self.leader = self.leader or self._child_of(self.proc.pid)
            if self.leader and self.run("systemctl", "is-system-running",
                                        check=False).stdout.strip() in {"running", "degraded"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the container did not boot in {timeout:.0f} s")

    @staticmethod
    def _child_of(pid: int) -> int | None:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # systemd-nspawn's own PID: it powers the container off
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # --- inside ----------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
        prefix = ["nsenter", "-t", str(self.leader), "-a"]
        if env:
            prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
        result = subprocess.run(prefix + list(cmd), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", *args, check=check).stdout

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).strip()

    def journal(self, unit: str) -> list[dict]:
        out = self.run("journalctl", "-u", unit, "-o", "json", "--no-pager").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def path(self, inside: str) -> Path:
        """The container's file `inside`, as the host sees it (its root via /proc)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str) -> None:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)  # one change event for PathChanged=, never a half-written file

    # --- the product -----------------------------------------------------------------------

    def install(self, venv: Path, prefix: str = "/opt/cappuccino") -> None:
        """`cappuccino install` as an operator runs it from the checkout, with `venv` (the
        prefix's virtualenv that `install` built on the host, not editable, from the lock)
        standing in for the one it would build here (no network, no minutes of pip). The
        services run that virtualenv, never the checkout."""
        python = str(REPO / ".venv" / "bin" / "python")
        # /usr is the host's, read-only, in this container: a tmpfs on /usr/local takes the
        # vendor units and the `cappuccino` link that install puts there
        self.run("mount", "-t", "tmpfs", "tmpfs", "/usr/local")
        self.run(python, "-m", "cappuccino_core.cli", "install", "--prefix", prefix, "--no-venv")
        self.run("mkdir", "-p", prefix)
        self.run("ln", "-sfn", str(venv), f"{prefix}/venv")
        self.python = f"{prefix}/venv/bin/python"
        hidden = HIDDEN_HOMES + (Path("/tmp"), Path("/var/tmp"))  # ProtectHome=, PrivateTmp=
        exposed = [p for p in (PYTHON_HOME, REPO) if is_within(p, hidden)]
        if exposed:
            # Only because this test's interpreter or checkout lives where the units hide
            # (e.g. pyenv under /root): a real install's virtualenv does not.
            self.write("/etc/systemd/system/cappuccino-.service.d/test-python.conf",
                       "[Service]\nProtectHome=tmpfs\n"
                       + "".join(f"BindReadOnlyPaths={p}\n" for p in exposed))
        self.systemctl("daemon-reload")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(self.python, "-m", "cappuccino_core.cli",
                        *args, check=check, env={"CAPPUCCINO_CONFIG_DIR": "/etc/cappuccino"})
