"""Trial artifacts: a model that describes itself.

`<root>/<study>/<trial_id>/` holds `model.pt` (a state dict of tensors), `spec.json` (symbols in
order, timeframe, lookback, feature set and names, normalisation, hyperparameters, env settings
including the trailing stop, study, trial id and number, value, code version) and `model.sha256`.
Directories are keyed by study AND trial id: trial numbers repeat across studies.

Loading checks the checksum before unpickling anything and loads with
`torch.load(weights_only=True)`: a model file is untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..agent import ActorCritic
from ..files import fsync_path

SPEC_FORMAT = 1


class ArtifactError(Exception):
    """An artifact that must not be served: missing, corrupted or not what it claims."""


def artifact_dir(root: str | Path, study: str, trial_id: int) -> Path:
    return Path(root) / study / str(trial_id)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_artifact(directory: Path, agent: ActorCritic, spec: dict) -> str:
    """Write the artifact completely in a temporary directory, then rename it into place.
    Returns the weights' sha256."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        state = {k: v.detach().cpu() for k, v in agent.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        digest = sha256_file(tmp / "model.pt")
        (tmp / "spec.json").write_text(json.dumps({**spec, "format": SPEC_FORMAT,
                                                   "sha256": digest}, indent=2))
        (tmp / "model.sha256").write_text(f"{digest}  model.pt\n")
        for f in tmp.iterdir():
            fsync_path(f)
        if directory.exists():
            shutil.rmtree(directory)  # a retried trial id rewrites its own artifact
        os.rename(tmp, directory)
        fsync_path(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def read_spec(directory: Path) -> dict:
    try:
        return json.loads((Path(directory) / "spec.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory}: unreadable spec.json ({e})") from e


def load_artifact(directory: Path, expected_sha256: str | None = None) -> tuple[ActorCritic, dict]:
    """The policy and its spec, after checking the weights' checksum (against the spec and,
    when given, against the checksum the caller expects)."""
    directory = Path(directory)
    spec = read_spec(directory)
    weights = directory / "model.pt"
    if not weights.exists():
        raise ArtifactError(f"{directory}: model.pt is missing")
    digest = sha256_file(weights)
    if digest != spec.get("sha256") or (expected_sha256 and digest != expected_sha256):
        raise ArtifactError(f"{directory}: model.pt checksum {digest[:12]} does not match "
                            f"{(expected_sha256 or spec.get('sha256') or '?')[:12]}")
    if spec.get("format") != SPEC_FORMAT:
        raise ArtifactError(f"{directory}: spec format {spec.get('format')}, "
                            f"expected {SPEC_FORMAT}")
    net = spec["network"]
    agent = ActorCritic(net["obs_size"], net["n_actions"], net["hidden"], net["layers"], 0.0)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        agent.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any failure to load is a refusal
        raise ArtifactError(f"{directory}: weights refused ({type(e).__name__}: {e})") from e
    agent.eval()
    return agent, spec
