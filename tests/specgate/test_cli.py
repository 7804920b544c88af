"""The ``specgate`` command: keys create prints a key that the API accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.config import get_settings
from specgate.cli import app
from tests.conftest import make_settings
from tests.gateway.helpers import Api


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, pg_home: Path, ledger_url: str) -> Iterator[None]:
    monkeypatch.setenv("SPECGATE_DATABASE_URL", ledger_url)
    monkeypatch.setenv("SPECGATE_HOME", str(pg_home))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_keys_create_prints_a_working_key(cli_env: None, gateway_factory: Any, pg_home: Path,
                                          ledger_url: str) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "cli-t", "--role", "admin"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip()
    assert secret.startswith("sgk_")
    api = Api(gateway_factory(make_settings(pg_home, ledger_url)), secret)
    assert api.get("/v1/admin/keys").json()[0]["role"] == "admin"


def test_keys_create_refuses_an_unknown_role(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "t", "--role", "root"])
    assert result.exit_code != 0
    assert "role must be one of" in result.output


def test_migrate_command(cli_env: None) -> None:
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "migrated" in result.output
