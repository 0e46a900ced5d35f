"""Trial artifacts: a model that describes itself, and `ModelSpec`, the one type that reads it.

`<root>/<study>/<trial_id>/` holds `model.pt` (a state dict of tensors), `spec.json` (a
`ModelSpec`: symbols in order, timeframe, lookback, feature set and names, normalisation,
hyperparameters, env settings including the risk rules it was trained under, study, trial id and
number, value, code version) and `model.sha256`. Directories are keyed by study AND trial id:
trial numbers repeat across studies.

Training writes a spec; the ensemble, the deployer and the trader read it, all through
`ModelSpec.from_dict`, which validates it once and refuses a format it does not know. Loading
checks the checksum before unpickling anything and loads with `torch.load(weights_only=True)`:
a model file is untrusted input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.errors import CappuccinoError
from ..common.files import fsync_path
from ..rl.actions import SPACES, n_outputs
from ..rl.env_settings import EnvSettings, Normalisation

if TYPE_CHECKING:  # torch is imported where weights are written or read, not for a spec
    from ..rl.agent import ActorCritic

# 2: observations lay out the portfolio as [assets..., cash], like actions (1 was [cash, assets])
# 3: buy fees in the asset; re-entry cooldown in the observation
SPEC_FORMAT = 4  # 4: each asset's room to its stop in the observation; the action space


def _rule(value) -> str:
    """A risk setting as a reader says it: null is "none"."""
    return "none" if value is None else str(value)


class ArtifactError(CappuccinoError):
    """An artifact that must not be served: missing, corrupted or not what it claims."""
    label = "model artifact refused"


@dataclass(frozen=True)
class NetworkSpec:
    obs_size: int
    n_actions: int
    hidden: int
    layers: int


# The risk and cost settings a model is trained under and must be traded under; `label` and
# the config value each is compared with (see `ModelSpec.risk_differences`).
RISK_FIELDS = {
    "trailing_stop_pct": ("trailing stop", lambda cfg: cfg.risk.trailing_stop_pct),
    "stop_loss_pct": ("stop loss", lambda cfg: cfg.risk.stop_loss_pct),
    "stop_check": ("stop check", lambda cfg: cfg.risk.stop_check),
    "reentry_cooldown_bars": ("re-entry cooldown (bars)",
                              lambda cfg: cfg.risk.reentry_cooldown_bars),
    "max_position_pct": ("max position", lambda cfg: cfg.risk.max_position_pct),
    "min_cash_reserve_pct": ("cash reserve", lambda cfg: cfg.risk.min_cash_reserve_pct),
    "fee": ("fee", lambda cfg: cfg.broker.taker_fee),
    "slippage_bps": ("slippage (bps)", lambda cfg: cfg.broker.slippage_bps),
    "min_order_notional": ("min order notional", lambda cfg: cfg.broker.min_order_notional),
}


@dataclass(frozen=True)
class ModelSpec:
    study: str
    trial_id: int
    trial_number: int
    value: float | None
    symbols: tuple[str, ...]
    timeframe: str
    lookback: int
    feature_set: str
    feature_names: tuple[str, ...]
    normalisation: Normalisation
    hyperparameters: dict
    env: EnvSettings
    network: NetworkSpec
    seed: int
    code_version: str
    ppo: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)
    held_out_from: str | None = None
    weights: str = "final fit on the whole training range"
    sha256: str | None = None
    format: int = SPEC_FORMAT

    # --- (de)serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(symbols=list(self.symbols), feature_names=list(self.feature_names),
                 normalisation=self.normalisation.to_dict(), env=self.env.to_dict(),
                 network=dataclasses.asdict(self.network))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> "ModelSpec":
        """Validate a spec read from disk; ArtifactError names what is wrong."""
        if not isinstance(d, dict):
            raise ArtifactError(f"{where}: not a JSON object")
        if d.get("format") != SPEC_FORMAT:
            raise ArtifactError(f"{where}: spec format {d.get('format')!r}, this release reads "
                                f"format {SPEC_FORMAT} (retrain, or serve it with the release "
                                "that trained it)")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing, unknown = required - set(d), set(d) - names
        if missing or unknown:
            raise ArtifactError(f"{where}: missing keys {sorted(missing)}, unknown keys "
                                f"{sorted(unknown)}")
        try:
            env_fields = {f.name for f in dataclasses.fields(EnvSettings)}
            extra = set(d["env"]) - env_fields
            if extra:
                raise ValueError(f"unknown env settings {sorted(extra)}")
            spec = cls(**{**d, "symbols": tuple(d["symbols"]),
                          "feature_names": tuple(d["feature_names"]),
                          "normalisation": Normalisation.from_dict(d["normalisation"]),
                          "env": EnvSettings(**d["env"]),
                          "network": NetworkSpec(**d["network"])})
        except (TypeError, ValueError, KeyError) as e:
            raise ArtifactError(f"{where}: invalid spec ({e})") from e
        if spec.env.action_space not in SPACES:
            raise ArtifactError(f"{where}: unknown action space {spec.env.action_space!r}")
        outputs = n_outputs(spec.env.action_space, len(spec.symbols))
        if spec.lookback < 1 or spec.network.n_actions != outputs:
            raise ArtifactError(f"{where}: lookback {spec.lookback} or network outputs "
                                f"{spec.network.n_actions} do not fit {len(spec.symbols)} symbols "
                                f"in the {spec.env.action_space} action space")
        return spec

    # --- fit with the trading configuration ------------------------------------------------

    def mismatch(self, cfg) -> str | None:
        """Why this model cannot read the configured market at all (symbols and their order,
        timeframe, feature set) or trade it as configured (decision cadence), or None."""
        if list(self.symbols) != list(cfg.data.symbols):
            return f"symbols {list(self.symbols)} != configured {list(cfg.data.symbols)}"
        if self.timeframe != cfg.data.timeframe:
            return f"timeframe {self.timeframe} != configured {cfg.data.timeframe}"
        if self.feature_set != cfg.data.feature_set:
            return f"feature set {self.feature_set} != configured {cfg.data.feature_set}"
        if self.env.decision_bars != cfg.data.decision_bars:
            return (f"decides every {self.env.decision_bars} bar(s), configured every "
                    f"{cfg.data.decision_bars}")
        return None

    def risk_differences(self, cfg) -> list[str]:
        """How the risk rules and costs it was trained under differ from those it would be
        traded under, e.g. ['trailing stop 0.12 trained, 0.1 configured']."""
        out = []
        for name, (label, configured) in RISK_FIELDS.items():
            trained, live = getattr(self.env, name), configured(cfg)
            if isinstance(trained, str) or isinstance(live, str):
                same = trained == live
            else:
                same = (trained is None and live is None) or (
                    trained is not None and live is not None and abs(trained - live) <= 1e-12)
            if not same:
                out.append(f"{label} {_rule(trained)} trained, {_rule(live)} configured")
        return out

    @property
    def rebalance_band(self) -> float:
        return self.env.min_rebalance_weight


# --- files -----------------------------------------------------------------------------------

def artifact_dir(root: str | Path, study: str, trial_id: int) -> Path:
    return Path(root) / study / str(trial_id)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_artifact(directory: Path, agent: "ActorCritic", spec: ModelSpec) -> str:
    """Write the artifact completely in a temporary directory, then rename it into place.
    Returns the weights' sha256."""
    import torch
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        state = {k: v.detach().cpu() for k, v in agent.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        digest = sha256_file(tmp / "model.pt")
        spec = dataclasses.replace(spec, sha256=digest, format=SPEC_FORMAT)
        (tmp / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
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


def read_spec(directory: Path) -> ModelSpec:
    path = Path(directory) / "spec.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory}: unreadable spec.json ({e})") from e
    return ModelSpec.from_dict(raw, str(directory))


def load_artifact(directory: Path,
                  expected_sha256: str | None = None) -> tuple["ActorCritic", ModelSpec]:
    """The policy and its spec, after checking the weights' checksum (against the spec and,
    when given, against the checksum the caller expects)."""
    import torch

    from ..rl.agent import ActorCritic
    directory = Path(directory)
    spec = read_spec(directory)
    weights = directory / "model.pt"
    if not weights.exists():
        raise ArtifactError(f"{directory}: model.pt is missing")
    digest = sha256_file(weights)
    if digest != spec.sha256 or (expected_sha256 and digest != expected_sha256):
        raise ArtifactError(f"{directory}: model.pt checksum {digest[:12]} does not match "
                            f"{(expected_sha256 or spec.sha256 or '?')[:12]}")
    net = spec.network
    agent = ActorCritic(net.obs_size, net.n_actions, net.hidden, net.layers, 0.0,
                        settings=spec.env, n_assets=len(spec.symbols))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        agent.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any failure to load is a refusal
        raise ArtifactError(f"{directory}: weights refused ({type(e).__name__}: {e})") from e
    agent.eval()
    return agent, spec
