"""What `cappuccino install` puts on a server is a whole product: the package built as a wheel
(not editable), from the lock, every module importable without the checkout, `cappuccino demo`
running from it. An earlier release lost `trading/` (no `__init__.py`) in exactly this install
while every test of the editable checkout passed."""

import subprocess
from pathlib import Path

from conftest import REPO

PACKAGES = ("cappuccino_core", "daemons")


def modules_in_checkout() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # -I: isolated, so neither the working directory nor PYTHONPATH can lend the checkout
    return subprocess.run([str(venv / "bin" / "python"), "-I", *args], cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


def test_every_module_imports_from_the_installed_package(installed_venv, tmp_path):
    names = modules_in_checkout()
    assert "cappuccino_core.trading.trader" in names
    probe = ("import importlib, json, sys\n"
             "where = {}\n"
             "for name in sys.argv[1:]:\n"
             "    where[name] = importlib.import_module(name).__file__\n"
             "print(json.dumps(where))\n")
    result = run(installed_venv, "-c", probe, *names, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    where = json.loads(result.stdout)
    site = str(installed_venv.resolve())
    outside = {n: f for n, f in where.items() if not str(Path(f).resolve()).startswith(site)}
    assert not outside, f"imported from outside the installed package: {outside}"


def test_the_install_is_not_editable_and_carries_the_sample_data(installed_venv, tmp_path):
    result = run(installed_venv, "-m", "pip", "show", "-f", "cappuccino", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Editable project location" not in result.stdout
    files = result.stdout
    assert "cappuccino_core/trading/__init__.py" in files
    assert "cappuccino_core/sample_data/BTCUSDT_1h.csv.gz" in files


def test_the_installed_versions_are_the_locked_ones(installed_venv, tmp_path):
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            locked[name.lower().replace("_", "-")] = version
    result = run(installed_venv, "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    installed = dict(line.lower().replace("_", "-").split("==") for line in
                     result.stdout.splitlines() if "==" in line)
    wrong = {n: (v, installed.get(n)) for n, v in locked.items()
             if n not in {"pip"} and installed.get(n) != v}
    assert not wrong, f"locked vs installed: {wrong}"
    assert installed["torch"].endswith("+cpu")


def test_cappuccino_demo_runs_from_the_installed_package(installed_venv, tmp_path):
    result = subprocess.run([str(installed_venv / "bin" / "cappuccino"), "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env={"PATH": f"{installed_venv / 'bin'}:/usr/bin:/bin",
                                 "HOME": str(tmp_path)})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert "[7] paper replay:" in result.stdout and "[9] report:" in result.stdout


def test_the_wheel_builds_without_packaging_warnings(tmp_path):
    """setuptools warns of a directory it would ship as data rather than as a package (how
    `trading/` went missing, and `sample_data/` was warned about, on every install)."""
    import sys
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    out = built.stdout + built.stderr
    for warning in ("is absent from the `packages` configuration", "as data is deprecated",
                    "Package would be ignored"):
        assert warning not in out, warning
    (wheel,) = tmp_path.glob("cappuccino-*.whl")
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cappuccino_core/trading/__init__.py" in names
    assert {f"cappuccino_core/{p.relative_to(REPO / 'cappuccino_core').as_posix()}"
            for p in (REPO / "cappuccino_core").rglob("*.py")} <= names


def test_every_runtime_dependency_has_an_upper_bound_and_a_locked_version():
    """A server installed next month gets what CI tested: the lock pins each requirement
    inside its declared range, and no range is open above (a new major of an SDK cannot
    arrive unannounced)."""
    import configparser

    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requirements = [Requirement(line) for line in
                    cfg["options"]["install_requires"].strip().splitlines()]
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            locked[name.lower().replace("_", "-")] = version
    for req in requirements:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), str(req)
        version = locked[req.name.lower().replace("_", "-")]
        assert req.specifier.contains(version, prereleases=True), (str(req), version)
