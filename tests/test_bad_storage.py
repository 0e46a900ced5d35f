"""Every command against a storage that is down and against someone else's database: one line
naming the storage, the right exit code, and nothing created. Generated over commands x
faults, in this process (the installed script, as an operator runs it, is
test_resilience.py's)."""

import sqlite3

import pytest

from cappuccino_core import cli

from conftest import write_config

# every command that opens the storage (`ensemble show` reads the published files only)
COMMANDS = [["study", "list"], ["study", "activate", "s"], ["ensemble", "sync"],
            ["trader", "status"], ["trader", "history"], ["deploy"], ["reconcile"],
            ["backtest", "--trial", "1", "--study", "s"], ["paper", "--replay"],
            ["train", "--n-trials", "1"], ["report"], ["study", "delete", "s", "--yes"]]


def foreign_sqlite(path):
    """Another application's SQLite database: a table of its own, nothing of ours."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")


def tables(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("fault", ["down", "foreign"])
def test_every_command_against_a_bad_storage_is_one_line(command, fault, tmp_path, capsys):
    db = tmp_path / "other.sqlite"
    if fault == "foreign":
        foreign_sqlite(db)
        url, code, said = f"sqlite:///{db}", 2, "neither Optuna's nor Cappuccino's"
    else:
        url, code, said = "postgresql://nobody@127.0.0.1:1/nowhere", 1, \
            "storage unreachable (postgresql://nobody@127.0.0.1:1/nowhere)"
    etc = write_config(tmp_path / "etc", {"storage": {"url": url},
                                          "paths": {"state_dir": str(tmp_path / "state")}},
                       active_study="s")
    got = cli.main([*command, "--config-dir", str(etc)])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if " WARNING " not in line and " INFO " not in line]  # the log, not the answer
    if command == ["report"] and fault == "down":
        said = "storage unreachable"
    assert got == code and len(err) == 1 and said in err[0], (got, err)
    if fault == "foreign":
        assert tables(db) == {"customers"}  # not a table created in it
