"""The body of the ``specgate demo`` command (kept here so ``specgate/cli.py`` stays a list of
commands)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from gateway.config import Settings
from lab.demo.player import DemoError
from lab.demo.runner import run_demo


def demo_command(settings: Settings, speed: float | None, fast: bool, json_out: str | None,
                 console: Console) -> int:
    """Run the demo; exit status 0 only if the sequential-run check held."""
    if speed is not None and speed <= 0:
        console.print("[red]--speed must be positive[/]")
        return 2
    try:
        report = run_demo(settings, speed=speed, fast=fast,
                          json_out=Path(json_out) if json_out else None, console=console)
    except DemoError as error:
        console.print(f"[bold red]demo failed:[/] {error}")
        return 1
    return 0 if report["sequential"]["same"] else 1
