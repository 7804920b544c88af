"""``specgate conformance tau2``: every task of a τ² domain through a real gateway server.

The database is the configured one or the embedded default under ``--home`` (like ``specgate
bench gateway``); only the domain's adapter is loaded. The gateway is a ``LocalGateway`` child
process (``specgate serve``), so the figures include HTTP, the ledger and the turn commit as in
production. The domain's tables are reset to τ²'s seed before every task; with a configured
database that means its ``<domain>_`` tables are overwritten.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.children import exit_on_sigterm, settings_env
from gateway.config import Settings
from lab.bench.harness import machine_info
from lab.conformance import reference, report
from lab.conformance.replay import GatewayApi, Replayer, TaskResult
from lab.conformance.seeding import Seeder
from lab.servers import LocalGateway

TENANT = "conformance"
CI_TASKS = 20


@dataclass(frozen=True)
class Options:
    domain: str
    tasks: int | None = None  # None: all
    task_ids: tuple[str, ...] = ()
    speculative: bool = False
    out: Path | None = None
    home: Path = Path(".specgate/conformance")


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """``count`` items spread evenly over ``items`` (first and last included), in order."""
    if count is None or count >= len(items):
        return list(items)
    if count <= 1:
        return list(items[:count])
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def select_tasks(domain: str, count: int | None = None, ids: Sequence[str] = ()) -> list[Any]:
    """The tasks to run: the listed ids, else ``count`` spread over the domain (all: None)."""
    tasks = reference.tasks(domain)
    if ids:
        known = {str(t.id): t for t in tasks}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ValueError(f"no {domain} task with id {missing[0]!r}")
        return [known[i] for i in ids]
    return spread(tasks, count)


def conformance_settings(settings: Settings, domain: str, home: Path) -> Settings:
    """Only the domain's adapter (on its configured tool database, if any); the embedded
    database under ``home`` when none is configured, so runs never mix with a demo's."""
    tools = {k: v for k, v in settings.tool_database_urls.items() if k == domain}
    update: dict[str, Any] = {"adapters": [domain], "tool_database_urls": tools}
    if settings.embedded:
        update["home"] = home
    return settings.model_copy(update=update)


@dataclass
class Prepared:
    """What the run stands on: the ledger URL, a key, the seeded domain, the tasks."""

    url: str
    key: str
    seeder: Seeder
    seed: report.SeedFigures
    tasks: list[Any]
    references: list[reference.ReferenceRun] = field(default_factory=list)


def prepare(settings: Settings, options: Options) -> Prepared:
    """Migrate, load or check the snapshot, make a key, and replay the references."""
    from gateway.migrate import migrate_all
    from lab.bench.harness import create_app_key

    url = migrate_all(settings)
    seeder = Seeder(options.domain, settings.tool_database_urls.get(options.domain, url))
    try:
        info = seeder.prepare()
        full = seeder.reset()  # the first reset refills every table
        seed_ok = seeder.db_hash() == reference.db_hash(options.domain,
                                                         reference.seed_data(options.domain))
        key = create_app_key(url, TENANT, "specgate conformance tau2")
    except BaseException:
        seeder.close()
        raise
    tasks = select_tasks(options.domain, options.tasks, options.task_ids)
    figures = report.SeedFigures(loaded=info.loaded, load_s=info.load_s, full_reset_s=full,
                                 matches_tau2=seed_ok)
    return Prepared(url, key, seeder, figures, tasks)


def gateway_server(settings: Settings, url: str, log_name: str) -> LocalGateway:
    """A real gateway server (child process, no worker) on the ledger at ``url``; use it as a
    context manager. Its log goes to ``log_name`` under the settings' home."""
    return LocalGateway(env=settings_env(settings, url),
                        log_path=settings.home.resolve() / log_name, worker=False)


@contextmanager
def gateway_client(settings: Settings, url: str, key: str) -> Iterator[httpx.Client]:
    """A real gateway server (child process) and an HTTP client with the key."""
    with gateway_server(settings, url, "conformance-gateway.log") as gateway, httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {key}"},
            timeout=120) as http:
        yield http


def replay_all(prepared: Prepared, http: httpx.Client, options: Options,
               console: Console) -> tuple[list[TaskResult], float]:
    """Every selected task with a valid reference, with a progress bar; also returns how long
    the loop waited for τ²'s reference replays."""
    replayer = Replayer(GatewayApi(http), prepared.seeder, options.domain, options.speculative)
    results: list[TaskResult] = []
    waited = 0.0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn())
    with (closing(reference.ReplaysAhead(options.domain, prepared.tasks)) as references,
          Progress(*columns, console=console) as progress):
        bar = progress.add_task(f"{options.domain} tasks", total=len(prepared.tasks), failed=0)
        for index in range(len(prepared.tasks)):
            started = time.perf_counter()
            ref = references[index]
            waited += time.perf_counter() - started
            prepared.references.append(ref)
            if ref.valid:
                results.append(replayer.run(ref))
                progress.update(bar, failed=sum(not r.passed for r in results))
            progress.advance(bar)
    return results, waited


def run(settings: Settings, options: Options, console: Console | None = None
        ) -> report.Report:
    """Prepare, replay every task through a gateway, print the summary, write the JSON."""
    console = console or Console()
    settings = conformance_settings(settings, options.domain, options.home)
    with console.status(f"preparing the {options.domain} database…"):
        prepared = prepare(settings, options)
    try:
        started = time.perf_counter()
        with gateway_client(settings, prepared.url, prepared.key) as http:
            results, waited = replay_all(prepared, http, options, console)
        result = report.build(options.domain, options.speculative, prepared.references,
                              results, prepared.seed, time.perf_counter() - started, waited,
                              machine_info(prepared.url))
    finally:
        prepared.seeder.close()
    report.render(console, result)
    if options.out is not None:
        report.write(result, options.out)
        console.print(f"wrote {options.out}")
    return result


def options_from(domain: str, tasks: int | None, task_ids: Sequence[str], speculative: bool,
                 out: str | None, home: str) -> Options:
    """The command line's choices, checked (``ValueError`` names the offending option)."""
    if domain not in reference.DOMAINS:
        raise ValueError(f"--domain must be one of {', '.join(reference.DOMAINS)}, "
                         f"got {domain!r}")
    if importlib.util.find_spec(f"tool_adapters.{domain}.tau2data") is None:
        raise ValueError(f"--domain {domain}: its adapter (tool_adapters/{domain}/tau2data.py) "
                         "is not there")
    if tasks is not None and tasks < 1:
        raise ValueError(f"--tasks must be at least 1, got {tasks}")
    known = {str(t.id) for t in reference.tasks(domain)}
    unknown = [i for i in task_ids if i not in known]
    if unknown:
        raise ValueError(f"--task-id: no {domain} task {unknown[0]!r}")
    return Options(domain=domain, tasks=tasks, task_ids=tuple(task_ids),
                   speculative=speculative, out=Path(out) if out else None, home=Path(home))


def main(options: Options, console: Console | None = None) -> int:
    """Entry of the CLI command; returns the exit status (1 on any mismatch)."""
    from gateway.config import get_settings

    exit_on_sigterm()
    return 0 if run(get_settings(), options, console).ok else 1
