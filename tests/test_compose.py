"""docker-compose.yml against the real ``specgate`` command: Docker does not run here, so each
service's command line is parsed by the CLI's own click parser, in the environment compose
would give it (``${VAR:-default}`` resolved as compose does), without running it. A renamed
option or subcommand, or a required value left empty, fails here instead of in a container."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from specgate.cli import app

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
# What the operator exports before `docker compose --profile agent run agent`.
HOST_ENV = {"SPECGATE_API_KEY": "sg_app_example"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
# Newer typer carries its own copy of click: its classes are taken from what typer exports
# (BadParameter derives from click's UsageError, the parent of every command-line error).
UsageError: type[Exception] = typer.BadParameter.__mro__[1]
assert UsageError.__name__ == "UsageError"


def _interpolate(value: str, env: dict[str, str]) -> str:
    """``${NAME}`` and ``${NAME:-default}`` as compose resolves them (empty → default)."""
    return _VARIABLE.sub(lambda m: env.get(m[1]) or (m[2] or ""), value).replace("$$", "$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text())
    return data["services"]


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """The ``specgate`` command lines a service runs (``sh -c "a && b"`` gives two)."""
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if argv[:2] == ["sh", "-c"]:
        lines = [shlex.split(part) for part in argv[2].split("&&")]
    else:
        lines = [argv]
    return [[_interpolate(a, HOST_ENV) for a in line] for line in lines
            if line and line[0] == "specgate"]


def _parse(argv: list[str]) -> Any:
    """The click context built for ``argv`` (``specgate`` dropped), down to the subcommand;
    a bad option, a missing required one or a bad value raises ``UsageError``."""
    command: Any = typer.main.get_command(app)
    name, args, parent = "specgate", argv[1:], None
    while hasattr(command, "resolve_command"):  # a group; ours take no options of their own
        parent = command.make_context(name, args[:1], parent=parent)
        name, command, args = command.resolve_command(parent, args)
    return command.make_context(name, args, parent=parent)


def _environment(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {k: _interpolate(str(v), HOST_ENV) for k, v in service.get("environment", {}).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_the_skeletons_services_are_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "redis", "migrate", "gateway", "balancer", "worker", "agent"} <= set(
        services)
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown service {needed!r}"


@pytest.mark.parametrize("name", ["migrate", "gateway", "worker", "agent"])
def test_every_specgate_command_parses(services: dict[str, dict[str, Any]], name: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    service = services[name]
    _environment(service, monkeypatch)
    lines = _commands(service)
    assert lines, f"{name} runs no specgate command: {service['command']!r}"
    for argv in lines:
        try:
            _parse(argv)
        except UsageError as error:
            pytest.fail(f"{name}: {shlex.join(argv)}: {error}")


def test_the_agent_runs_the_openai_backend_against_the_gateway_service(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    agent = services["agent"]
    env = _environment(agent, monkeypatch)
    [argv] = _commands(agent)
    params = _parse(argv).params
    assert params["backend"] == "openai" and params["stdin"] is True
    assert params["key"] == HOST_ENV["SPECGATE_API_KEY"]
    # The balancer, which passes requests on to the gateway service at the port its own
    # command serves on.
    [serve] = [line for line in _commands(services["gateway"]) if line[1] == "serve"]
    port = _parse(serve).params["port"]
    listen, upstream = _balancer(services["balancer"])
    assert upstream == f"gateway:{port}"
    assert params["gateway"] == f"http://balancer:{listen}"
    # The endpoint comes from the environment and is never empty (the openai client would
    # take an empty OPENAI_BASE_URL as the endpoint itself); the model from the command.
    assert params["base_url"] == env["OPENAI_BASE_URL"]
    assert env["OPENAI_BASE_URL"].startswith(("http://", "https://"))
    assert params["model"]
    assert agent.get("profiles") == ["agent"], "the agent must stay out of a plain `up`"
    assert agent.get("stdin_open") is True, "--stdin reads the utterance from the terminal"


def _balancer(service: dict[str, Any]) -> tuple[int, str]:
    """The port nginx listens on and its one upstream server, from the mounted config."""
    [mount] = [v for v in service["volumes"] if v.split(":")[1].startswith("/etc/nginx/")]
    conf = (COMPOSE.parent / mount.split(":")[0]).read_text()
    [listen] = re.findall(r"^\s*listen (\d+);", conf, re.M)
    [upstream] = re.findall(r"^\s*server ([\w.-]+:\d+);", conf, re.M)
    return int(listen), upstream


def test_three_gateways_behind_the_balancer_without_affinity(
        services: dict[str, dict[str, Any]]) -> None:
    gateway, balancer = services["gateway"], services["balancer"]
    assert gateway["deploy"]["replicas"] == 3
    assert "ports" not in gateway, "clients reach the gateways through the balancer only"
    assert balancer["ports"] == [f"{_balancer(balancer)[0]}:{_balancer(balancer)[0]}"]
    conf = (COMPOSE.parent / "deploy" / "nginx.conf").read_text()
    assert not re.search(r"^\s*(ip_hash|hash|sticky)\b", conf, re.M), "no affinity"
    # Replicas must not race the migrations: one migrate service runs them first.
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert [argv[1] for argv in _commands(gateway)] == ["serve"]


def test_a_missing_api_key_is_a_usage_error(services: dict[str, dict[str, Any]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SPECGATE_API_KEY on the host the agent stops at once, naming the option."""
    agent = services["agent"]
    _environment(agent, monkeypatch)
    monkeypatch.setenv("SPECGATE_API_KEY", _interpolate(agent["environment"]["SPECGATE_API_KEY"],
                                                        {}))
    [argv] = _commands(agent)
    with pytest.raises(UsageError, match="Missing parameter: key"):
        _parse(argv)
