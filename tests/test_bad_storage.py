"""Every command against a storage that is down, someone else's database, and a storage URL
that is wrong: one line naming the storage, the right exit code, and nothing created.
Generated over commands x faults."""

import sqlite3

import pytest

from conftest import write_config
from test_resilience import cappuccino, one_line

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
def test_every_command_against_a_bad_storage_is_one_line(command, fault, tmp_path):
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
    result = cappuccino(*command, "--config-dir", str(etc))
    if command == ["report"] and fault == "down":
        said = "storage unreachable"
    one_line(result, code, said)
    if fault == "foreign":
        assert tables(db) == {"customers"}  # not a table created in it
