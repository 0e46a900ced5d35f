import os
import subprocess
import sys

import pytest

from cappuccino_core import cli
from cappuccino_core.common.config import ConfigError, load_config, mask_secrets

from conftest import REPO, write_config


def test_defaults_without_files(tmp_path):
    cfg = load_config(tmp_path)
    assert cfg.risk.trailing_stop_pct is None  # docs/holding-rules.md: no stop by default
    assert cfg.ensemble.top_n == 10 and cfg.ensemble.min_members == 5
    assert cfg.broker.kind == "sim" and cfg.broker.taker_fee == 0.0025
    assert cfg.storage_url == f"sqlite:///{cfg.state_dir.resolve() / 'cappuccino.db'}"
    assert cfg.active_study is None


def test_example_files_are_valid():
    cfg = load_config(REPO / "config")
    assert cfg.active_study == "demo"
    assert cfg.data.symbols[0] == "BTC/USD"


def test_the_example_and_the_schema_are_generated_from_the_declarations():
    """config/cappuccino.yaml and docs/config.schema.json are what config_docs makes of the
    settings declared in config.py (`make config-docs` after a change); every setting and
    section has its doc; the example holds exactly the defaults; the schema accepts it and
    refuses what `load_config` refuses by key or type."""
    import dataclasses

    import jsonschema
    import yaml

    from cappuccino_core.common import config_docs
    from cappuccino_core.common.config import Config
    assert (REPO / "config" / "cappuccino.yaml").read_text() == config_docs.example_yaml(), \
        "config/cappuccino.yaml is stale: run make config-docs"
    assert (REPO / "docs" / "config.schema.json").read_text() == config_docs.render_schema(), \
        "docs/config.schema.json is stale: run make config-docs"
    undocumented = [f"{s.name}.{x.name}" for s in config_docs.sections() for x in s.settings
                    if not x.doc] + [s.name for s in config_docs.sections() if not s.doc]
    assert undocumented == []
    example = yaml.safe_load(config_docs.example_yaml())
    defaults = {k: v for k, v in dataclasses.asdict(Config()).items()
                if k not in ("config_dir", "active_study", "files_read")}
    assert example == defaults
    schema = config_docs.json_schema()
    jsonschema.validate(example, schema)
    for wrong in ({"risk": {"trailng_stop_pct": 0.1}}, {"risk": {"trailing_stop_pct": 1.5}},
                  {"data": {"timeframe": "1H"}}, {"training": {"cv_groups": 2.5}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_values_are_read_and_typed(tmp_path):
    write_config(tmp_path, {"risk": {"trailing_stop_pct": 0.2, "max_position_pct": 1},
                            "storage": {"url": "postgresql://u:pw@db/x"}}, active_study="s1")
    cfg = load_config(tmp_path)
    assert cfg.risk.trailing_stop_pct == 0.2
    assert cfg.risk.max_position_pct == 1.0 and isinstance(cfg.risk.max_position_pct, float)
    assert cfg.storage_url == "postgresql://u:pw@db/x"
    assert cfg.active_study == "s1"


def test_bad_value_names_file_key_value_and_expectation(tmp_path):
    write_config(tmp_path, {"risk": {"trailing_stop_pct": 10}})
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert str(e.value) == ("cappuccino.yaml: risk.trailing_stop_pct: "
                            "expected a number in (0, 1), got 10")


@pytest.mark.parametrize("config, key, fragment", [
    ({"risk": {"trailng_stop_pct": 0.1}}, "risk.trailng_stop_pct", "did you mean 'trailing_stop_pct'"),
    ({"riks": {}}, "riks", "did you mean 'risk'"),
    ({"data": {"symbols": ["BTC/USD", "btc"]}}, "data.symbols", "distinct symbols like BTC/USD"),
    ({"data": {"symbols": "BTC/USD"}}, "data.symbols", "a list of strings"),
    ({"data": {"timeframe": "1H"}}, "data.timeframe", "one of 1m, 5m, 15m, 1h"),
    ({"ensemble": {"top_n": 3, "min_members": 5}}, "ensemble.min_members", "<= ensemble.top_n"),
    ({"training": {"cv_groups": 2.5}}, "training.cv_groups", "an integer"),
    ({"storage": {"url": "mysql://x"}}, "storage.url", "postgresql+psycopg2://HOST[:PORT 1-65535]/DB or sqlite:///"),
    # storages that keep nothing, or no known driver (issue 29)
    ({"storage": {"url": "sqlite:///:memory:"}}, "storage.url", "not :memory:"),
    ({"storage": {"url": "sqlite:///"}}, "storage.url", "not an empty path"),
    ({"storage": {"url": "postgresqlfoo://x"}}, "storage.url", "postgresql+psycopg2://"),
    ({"paths": {"state_dir": ""}}, "paths.state_dir", "a path (not empty)"),
    ({"data": {"csv_path": " "}}, "data.csv_path", "a path (not empty)"),
    ({"data": {"start": "2023-06-01", "end": "2023-01-01T00:00+00:00"}}, "data.end",
     "a date after data.start"),
    ({"broker": {"kind": "alpaca", "paper": False}}, "broker.paper", "paper account only, always"),
    # a live account with bars from files would never see a new bar
    ({"broker": {"kind": "alpaca"}}, "data.source", "needs live bars"),
    (["not", "a", "mapping"], "", "a mapping"),
])
def test_invalid_files_are_refused_with_the_key(tmp_path, config, key, fragment):
    write_config(tmp_path, config)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert e.value.key == key
    assert fragment in str(e.value)
    assert str(e.value).startswith("cappuccino.yaml: ")


def test_broken_yaml_names_the_line(tmp_path):
    (tmp_path / "cappuccino.yaml").write_text("risk:\n  trailing_stop_pct: [0.1\n")
    with pytest.raises(ConfigError, match=r"cappuccino.yaml: expected valid YAML \(error at line"):
        load_config(tmp_path)


@pytest.mark.parametrize("content", ["study: ''\n", "study: 'a b'\n", "studdy: x\n",
                                     "study: x\nother: 1\n", "- x\n"])
def test_bad_active_study(tmp_path, content):
    (tmp_path / "active_study.yaml").write_text(content)
    with pytest.raises(ConfigError, match=r"^active_study.yaml: "):
        load_config(tmp_path)


def test_config_dir_from_environment(tmp_path, monkeypatch):
    write_config(tmp_path, {"ensemble": {"top_n": 7}})
    monkeypatch.setenv("CAPPUCCINO_CONFIG_DIR", str(tmp_path))
    assert load_config().ensemble.top_n == 7
    (tmp_path / "elsewhere").mkdir()
    assert load_config(tmp_path / "elsewhere").ensemble.top_n == 10  # the argument wins


def test_a_named_config_dir_that_does_not_exist_is_refused(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    assert cli.main(["config", "check", "--config-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: expected an existing configuration directory" in err
    assert cli.main(["status", "--config-dir", str(missing)]) == 2
    assert not any(tmp_path.rglob("*.db"))  # nothing was created on the way


def test_config_check_says_which_files_it_read(tmp_path, capsys):
    assert cli.main(["config", "check", "--config-dir", str(tmp_path)]) == 0
    assert "files read: none (no file there: every value is the default)" in capsys.readouterr().out
    write_config(tmp_path, {"ensemble": {"top_n": 7}}, active_study="s1")
    assert cli.main(["config", "check", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"files read: {tmp_path / 'cappuccino.yaml'}, {tmp_path / 'active_study.yaml'}" in out


def test_config_check_lists_every_error(tmp_path, capsys):
    write_config(tmp_path, {"risk": {"trailing_stop_pct": 10, "max_positon_pct": 0.2},
                            "ensemble": {"top_n": "ten"}, "training": {"cv": "kfold"}})
    assert cli.main(["config", "check", "--config-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "4 errors" in err
    for key in ("risk.trailing_stop_pct", "risk.max_positon_pct", "ensemble.top_n", "training.cv"):
        assert f"cappuccino.yaml: {key}: expected" in err, key


def test_dates_are_accepted_quoted_or_not_and_data_end_exists(tmp_path):
    (tmp_path / "cappuccino.yaml").write_text("data:\n  start: 2022-01-01\n  end: '2023-06-01'\n")
    cfg = load_config(tmp_path)
    assert (cfg.data.start, cfg.data.end) == ("2022-01-01", "2023-06-01")
    (tmp_path / "cappuccino.yaml").write_text("data:\n  end: 2023-13-45\n")
    with pytest.raises(ConfigError, match="data.end: expected a date"):
        load_config(tmp_path)


def test_secrets_are_masked():
    masked = mask_secrets({"storage": {"url": "postgresql://trader:hunter2@db:5432/x"},
                           "broker": {"api_secret_key": "s3cr3t", "api_key_id": "AKID",
                                      "kind": "alpaca"}})
    assert masked["storage"]["url"] == "postgresql://trader:***@db:5432/x"
    assert masked["broker"] == {"api_secret_key": "***", "api_key_id": "***", "kind": "alpaca"}


def test_config_check_command(tmp_path, capsys):
    write_config(tmp_path, {"storage": {"url": "postgresql://u:hunter2@db/x"}})
    assert cli.main(["config", "check", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "postgresql://u:***@db/x" in out and "hunter2" not in out
    write_config(tmp_path, {"risk": {"trailng_stop_pct": 0.1}})
    assert cli.main(["--config-dir", str(tmp_path), "config", "check"]) == 2
    assert "risk.trailng_stop_pct" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    """The installed `cappuccino` script itself, as an operator runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "cappuccino")
    ok = subprocess.run([exe, "config", "check", "--config-dir", str(REPO / "config")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    write_config(tmp_path, {"risk": {"trailing_stop_pct": 0.1, "max_positon_pct": 0.2}})
    bad = subprocess.run([exe, "config", "check", "--config-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "cappuccino.yaml: risk.max_positon_pct" in bad.stderr


def test_every_subcommand_has_help():
    parser = cli.build_parser()
    seen = 0
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            assert sub.description, name
            for nested in getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []:
                for sub_name, leaf in nested.choices.items():
                    assert leaf.description, f"{name} {sub_name}"
                    seen += 1
    assert seen >= 2


@pytest.mark.parametrize("name", ["cappuccino.yaml", "active_study.yaml"])
def test_a_config_file_that_links_to_nowhere_is_an_error_not_the_defaults(tmp_path, name):
    (tmp_path / name).symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(ConfigError, match="a link to nowhere"):
        load_config(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / name).symlink_to(tmp_path / name)  # a loop
    with pytest.raises(ConfigError, match=name):
        load_config(tmp_path)


def _numeric_keys():
    """Every numeric setting of the schema, as (section, key)."""
    import dataclasses
    import typing

    from cappuccino_core.common.config import Config
    out = []
    for section in dataclasses.fields(Config):
        if section.metadata.get("internal"):
            continue
        for f in dataclasses.fields(section.type if isinstance(section.type, type)
                                    else typing.get_type_hints(Config)[section.name]):
            hint = typing.get_type_hints(typing.get_type_hints(Config)[section.name])[f.name]
            if {int, float} & set(typing.get_args(hint) or (hint,)):
                out.append((section.name, f.name))
    return out


@pytest.mark.parametrize("section, key", _numeric_keys())
def test_every_numeric_key_refuses_a_value_nothing_downstream_can_honour(tmp_path, section,
                                                                         key):
    """10^30 passed the check for eleven keys and failed later (OutOfBoundsTimedelta,
    MemoryError): every number has an upper bound now, said with the key."""
    write_config(tmp_path, {section: {key: 10**30}})
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert e.value.key == f"{section}.{key}"


@pytest.mark.parametrize("bomb", [
    # a billion laughs: each level nine aliases of the one before
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)),
    "data: " + "[" * 20_000 + "]" * 20_000 + "\n",  # nesting past any recursion limit
])
def test_a_yaml_bomb_is_refused_at_once(tmp_path, bomb):
    import time
    (tmp_path / "cappuccino.yaml").write_text(bomb)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases are expanded|levels of nesting"):
        load_config(tmp_path)
    assert time.monotonic() - started < 1.0


def test_standard_yaml_merge_keys_are_accepted(tmp_path):
    (tmp_path / "cappuccino.yaml").write_text(
        "defaults: &risk {trailing_stop_pct: 0.1, stop_loss_pct: 0.2}\n"
        "risk:\n  <<: *risk\n  stop_loss_pct: 0.15\n")
    with pytest.raises(ConfigError, match="defaults"):  # an unknown section, not the merge
        load_config(tmp_path)
    (tmp_path / "cappuccino.yaml").write_text(
        "risk: &risk {trailing_stop_pct: 0.1, stop_loss_pct: 0.2}\n"
        "broker:\n  kind: sim\n")
    assert load_config(tmp_path).risk.stop_loss_pct == 0.2
    (tmp_path / "cappuccino.yaml").write_text(
        "x-base: &base\n  trailing_stop_pct: 0.1\n  stop_loss_pct: 0.2\n"
        "risk:\n  <<: *base\n  stop_loss_pct: 0.15\n")
    with pytest.raises(ConfigError, match="x-base"):
        load_config(tmp_path)


def test_merge_keys_override_in_a_known_section(tmp_path):
    (tmp_path / "cappuccino.yaml").write_text(
        "risk:\n  <<: {trailing_stop_pct: 0.12, stop_loss_pct: 0.2}\n  stop_loss_pct: 0.15\n")
    risk = load_config(tmp_path).risk
    assert (risk.trailing_stop_pct, risk.stop_loss_pct) == (0.12, 0.15)


def test_a_fetch_writes_the_config_through_its_link(tmp_path, shared_data, capsys):
    """cappuccino.yaml as a link to a file kept elsewhere: `data fetch --path` sets
    data.csv_path in that file, and the link stays a link."""
    kept = tmp_path / "kept" / "cappuccino.yaml"
    kept.parent.mkdir()
    kept.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\ndata:\n  symbols: [BTC/USD]\n")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "cappuccino.yaml").symlink_to(kept)
    assert cli.main(["data", "fetch", "--config-dir", str(etc), "--path", str(shared_data),
                     "--start", "2023-12-01", "--end", "2023-12-02"]) == 0
    assert (etc / "cappuccino.yaml").is_symlink()
    assert load_config(etc).data.csv_path == str(shared_data.resolve())
    assert not list(kept.parent.glob(".*.tmp")) and not list(etc.glob(".*.tmp"))


def test_a_flow_style_section_is_refused_before_the_fetch(tmp_path, shared_data, capsys):
    etc = write_config(tmp_path / "etc", {})
    (etc / "cappuccino.yaml").write_text(
        f"paths: {{state_dir: {tmp_path / 'state'}}}\ndata: {{symbols: [BTC/USD]}}\n")
    before = (etc / "cappuccino.yaml").read_text()
    code = cli.main(["data", "fetch", "--config-dir", str(etc), "--path", str(shared_data),
                     "--start", "2023-12-01", "--end", "2023-12-02"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flow style" in err[0], err
    assert (etc / "cappuccino.yaml").read_text() == before
    assert not (tmp_path / "state").exists()  # nothing fetched
    assert not list(etc.glob(".*.tmp"))


PATH_KEYS = [("data", "csv_path"), ("paths", "state_dir"), ("paths", "cache_dir"),
             ("artifacts", "path"), ("artifacts", "cache_dir")]


@pytest.mark.parametrize("section, key", PATH_KEYS)
@pytest.mark.parametrize("bad", ["empty", "missing", "dangling link", "a file"])
def test_every_path_key_refuses_a_path_that_cannot_be_what_it_names(tmp_path, section, key,
                                                                    bad, capsys):
    """Generated over the path keys: `config check` refuses, with the key named and exit 2,
    a path that is empty, or where a directory must be there (the CSV directory) or may be
    made (state, caches): nothing there, a link to nowhere, a file."""
    target = {"empty": "", "missing": str(tmp_path / "nothing"),
              "dangling link": str(tmp_path / "link"), "a file": str(tmp_path / "file")}[bad]
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("not a directory\n")
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")}})
    write_config(etc, {"paths": {"state_dir": str(tmp_path / "state")},
                       section: {key: target}})
    code = cli.main(["config", "check", "--config-dir", str(etc)])
    err = capsys.readouterr().err.strip().splitlines()
    may_be_made = key != "csv_path" and bad in ("missing", "dangling link")
    if may_be_made:  # made when first needed (a dangling link: its target is made)
        assert code == 0, err
        return
    assert code == 2 and len(err) == 1 and f"{section}.{key}" in err[0], err


@pytest.mark.parametrize("url", ["notaurl", "json://", "mailto:bob", "critical=nothing://x"])
def test_an_alert_url_apprise_cannot_send_to_is_refused(tmp_path, url, capsys):
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")},
                                          "alerts": {"urls": [url]}})
    (etc / "cappuccino.yaml").chmod(0o600)
    assert cli.main(["config", "check", "--config-dir", str(etc)]) == 2
    assert "alerts.urls[0]: expected a URL Apprise can send to" in capsys.readouterr().err


@pytest.mark.parametrize("section, key", _numeric_keys())
@pytest.mark.parametrize("value", [0, -1, 0.5, "1e400", True])
def test_every_numeric_key_takes_or_refuses_small_odd_values_with_its_name(tmp_path, section,
                                                                           key, value):
    """The sweep of every numeric key, at the bottom: each value is taken (and then is what
    was written) or refused naming the key, never a crash or a silent change."""
    write_config(tmp_path, {section: {key: value}})
    try:
        cfg = load_config(tmp_path)
    except ConfigError as e:
        assert e.key == f"{section}.{key}", str(e)
        return
    assert value not in ("1e400", True), "an infinite or boolean number was taken"
    assert getattr(getattr(cfg, section), key) == value
