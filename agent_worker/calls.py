"""The model's call DAG mapped onto gateway calls.

A model call id is the gateway's ``client_call_id``. Each ``ToolCall`` the model emits becomes
a ``CallRecord`` (a re-emitted id makes a new version of the record) and one task that: waits
for the versions of its dependencies it was issued against (a dependency that fails, is removed,
amended or cancelled cancels it here, as the gateway's cascade would); posts it — in the
order the model wrote it among the calls ready to go, with ``supersedes`` when it amends a
call the gateway still has live, placeholders ``"$3.a"`` passed through; waits until it has
settled (a ``task``-runner call: long polls of ``?wait=``); waits out the injected tool
latency, if any; and reports the observation on the event queue.

``remove`` is ``POST /v1/calls/{id}/cancel``: the gateway cascades, and the cascade it answers
with is reported as ``<cancelled>``. An amend cascades in the gateway too, but its answer shows
only the new call, so after an amend the turn is read back once to find what else left it
(dependents cancelled, replays that became ``conflict``).

Why per-call long polls and not the session's SSE stream: a ``db`` call settles in the answer
that issued it, and ``?wait=`` returns a ``task`` call with its result as soon as the tool
worker's notification that it settled arrives (``gateway.calls.settled``). The SSE stream polls
every 0.2 s and carries transitions without results, so it would add latency and still need a
read per call.

Turns: calls go into the gateway turn open at the time they are posted. At the commit point
the turn commits with every call the model kept; calls issued after it go into a new turn
(opened when the first of them is posted) that commits at the answer. A dependency on a call of
an earlier, committed turn is resolved here: its placeholders are replaced by its result.

The records and their outcomes are kept in ``agent_worker.call_records``; this module is the
part that talks to the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent_worker.call_records import (
    ALIVE,
    CallRecord,
    Outcome,
    ToolLatency,
    observation,
    record_commit,
    why_gone,
)
from agent_worker.clock import Clock
from agent_worker.errors import GatewayError
from agent_worker.events import Cancelled, External, Observation
from agent_worker.gateway_client import LIVE, UNSETTLED, GatewayClient
from agent_worker.placeholders import resolve
from agent_worker.protocol import ToolCall
from agent_worker.trace import Trace


class CallGraph:
    def __init__(self, gateway: GatewayClient, clock: Clock, trace: Trace,
                 emit: Callable[[External], None], tool_latency: ToolLatency | None = None,
                 ) -> None:
        self.gateway, self.clock, self.trace, self.emit = gateway, clock, trace, emit
        self.tool_latency = tool_latency
        self.records: dict[int, CallRecord] = {}
        self.session_id = ""
        self.turn_id: str | None = None
        self.turn_used = False  # a call was posted in the open turn
        self._turn_lock = asyncio.Lock()
        # Requests that change the turn go out one at a time, in the order the model wrote
        # them (the lock is fair): the gateway runs a turn's calls in arrival order, and that
        # order decides what a replay after an undo sees.
        self._lane = asyncio.Lock()
        self.epoch = 0  # the commit points passed; a call belongs to the commit of its epoch
        self._commits_done = 0
        self._commits = asyncio.Condition()
        self._side_tasks: set[asyncio.Task[None]] = set()

    async def open(self, metadata: dict[str, Any] | None = None) -> str:
        session = await self.gateway.create_session(metadata)
        self.session_id, self.turn_id = session["id"], session["turns"][0]["id"]
        self.trace.add("session", session_id=self.session_id, turn_id=self.turn_id)
        return self.session_id

    async def heard(self, text: str, final: bool) -> None:
        """Tell the gateway what the user said (the dashboard's timeline shows it beside the
        calls). Best effort: a gateway without the transcript route does not stop the agent."""
        if not text.strip() or not self.session_id:
            return
        try:
            await self.gateway.append_transcript(self.session_id, text.strip(), final=final,
                                                 turn_id=self.turn_id)
        except GatewayError as error:
            self.trace.add("transcript_not_recorded", error=str(error))

    # The model's actions -------------------------------------------------------------------

    def issue(self, call: ToolCall) -> CallRecord:
        old = self.records.get(call.id)
        deps = {d: self.records[d] for d in call.dependencies() if d in self.records}
        record = CallRecord(call, version=(old.version + 1) if old else 1, deps=deps,
                            epoch=self.epoch)
        self.records[call.id] = record
        if old is not None:
            old.end(Outcome.SUPERSEDED)
        record.task = asyncio.create_task(self._run(record, old), name=f"call-{call.id}")
        self.trace.add("call_issued", id=call.id, version=record.version, name=call.name,
                       arguments=call.arguments, depends_on=list(deps))
        return record

    def remove(self, call_id: int) -> None:
        record = self.records[call_id]
        record.end(Outcome.REMOVED)
        self.trace.add("call_removed", id=call_id, version=record.version)
        self._side(self._cancel_in_gateway(record))

    def pending(self) -> bool:
        return any(r.outcome == Outcome.PENDING for r in self.records.values())

    # One call's life ----------------------------------------------------------------------

    async def _run(self, record: CallRecord, old: CallRecord | None) -> None:
        try:
            if not await self._dependencies_ok(record):
                return
            view = await self._post(record, old)
            if view is None or record.outcome not in ALIVE:
                return
            posted_at = self.clock.now()
            if old is not None and old.view is not None:
                self._side(self.refresh())
            view = await self.gateway.settle(view)
            record.view = view
            if self.tool_latency is not None:
                await self.clock.sleep_until(posted_at + self.tool_latency(record.call))
            self._deliver(record, view)
        except GatewayError as error:
            if record.end(Outcome.FAILED):
                self._report(record, Observation(record.id, error.as_payload()))
        finally:
            record.posted.set()

    async def _dependencies_ok(self, record: CallRecord) -> bool:
        for dep_id, dep in record.deps.items():
            await dep.settled.wait()
            if dep.outcome not in (Outcome.OK, Outcome.COMMITTED):
                if record.end(Outcome.CANCELLED):
                    reason = f"call {dep_id}, which it depends on, was {dep.outcome}"
                    self._report(record, Cancelled(record.id, reason))
                return False
        return True

    async def _post(self, record: CallRecord, old: CallRecord | None) -> dict[str, Any] | None:
        await self._turn_ready(record)
        if old is not None:
            await old.posted.wait()
        async with self._lane:
            if record.outcome not in ALIVE:
                return None
            record.posting, self.turn_used = True, True
            try:
                view = await self._issue(record, old)
            finally:
                record.posting = False
        record.view, record.turn_id = view, self.turn_id
        record.posted.set()
        self.trace.add("call_posted", id=record.id, version=record.version,
                       gateway_id=view["id"], status=view["status"],
                       supersedes=view.get("supersedes"), turn_id=self.turn_id)
        return view  # amended or removed meanwhile: the caller sees the outcome

    async def _issue(self, record: CallRecord, old: CallRecord | None) -> dict[str, Any]:
        call = record.call
        supersedes = None
        if old is not None and old.turn_id == self.turn_id and old.gateway_live:
            supersedes = str(old.id)
        same_turn = [d for d, dep in record.deps.items() if dep.turn_id == self.turn_id]
        earlier = {d: dep.view.get("result") for d, dep in record.deps.items()
                   if d not in same_turn and dep.view is not None}
        return await self.gateway.issue(
            self.session_id, tool=call.name, arguments=resolve(call.arguments, earlier),
            client_call_id=str(call.id),
            depends_on=[str(d) for d in call.depends_on if d in same_turn],
            supersedes=supersedes)

    def _deliver(self, record: CallRecord, view: dict[str, Any]) -> None:
        self.trace.add("call_settled", id=record.id, version=record.version,
                       status=view["status"])
        if view["status"] in UNSETTLED:  # the tool worker never finished it
            if record.end(Outcome.FAILED):
                self._report(record, Observation(record.id, {"error": {
                    "code": "timeout", "message": "the tool did not finish in time"}}))
        elif view["status"] in LIVE:
            if record.outcome == Outcome.PENDING:
                record.outcome = Outcome.OK
                record.settled.set()
                self._report(record, Observation(record.id, observation(view)))
        elif view["status"] == "failed":
            if record.end(Outcome.FAILED):
                self._report(record, Observation(record.id, observation(view)))
        elif record.end(Outcome.CANCELLED):
            self._report(record, Cancelled(record.id, why_gone(view)))

    def _report(self, record: CallRecord, event: Observation | Cancelled) -> None:
        if isinstance(event, Observation):
            self.trace.add("observation", id=record.id, version=record.version,
                           payload=event.payload)
        else:
            self.trace.add("call_cancelled", id=record.id, version=record.version,
                           reason=event.reason)
        self.emit(event)

    # Cancellation, cascades and conflicts ---------------------------------------------------

    async def _cancel_in_gateway(self, record: CallRecord) -> None:
        await record.posted.wait()
        if not record.gateway_live or record.turn_id != self.turn_id:
            return
        assert record.view is not None
        try:
            async with self._lane:
                changed = await self.gateway.cancel(record.view["id"], "removed by the agent")
        except GatewayError as error:
            self.trace.add("gateway_error", op="cancel", id=record.id, error=str(error))
            await self.refresh()
            return
        for view in changed:
            if view["id"] == record.view["id"]:
                record.view = view
            else:
                self._gone(view, cause=f"call {record.id}, which it depends on, was removed")

    async def refresh(self) -> None:
        """Read the open turn back; report calls that left it without the model asking."""
        if self.turn_id is None:
            return
        turn_id = self.turn_id
        session = await self.gateway.session(self.session_id)
        for turn in session["turns"]:
            if turn["id"] == turn_id:
                for view in turn["calls"]:
                    if view["status"] not in LIVE:
                        self._gone(view, cause=None)

    def _gone(self, view: dict[str, Any], cause: str | None) -> None:
        for record in self.records.values():
            if record.view is not None and record.view["id"] == view["id"]:
                record.view = view
                if record.end(Outcome.CANCELLED):
                    reason = cause if cause and view["status"] == "cancelled" else why_gone(view)
                    self._report(record, Cancelled(record.id, reason))

    # Turns and commit ---------------------------------------------------------------------

    async def _turn_ready(self, record: CallRecord) -> None:
        """Wait out a commit this call is not part of; open a turn when none is open."""
        async with self._commits:
            await self._commits.wait_for(lambda: self._commits_done >= record.epoch)
        async with self._turn_lock:
            if self.turn_id is None:
                turn = await self.gateway.open_turn(self.session_id)
                self.turn_id, self.turn_used = turn["id"], False
                self.trace.add("turn_opened", turn_id=self.turn_id)

    def start_commit(self) -> asyncio.Task[list[External]]:
        """The commit point: calls issued so far belong to the open turn, which commits once
        each of them has settled; calls issued from now on wait and go into the next turn.
        The task returns what the model must be told (kept calls that failed at commit)."""
        epoch = self.epoch
        self.epoch += 1
        return asyncio.create_task(self._commit(epoch), name=f"commit-{epoch}")

    async def _commit(self, epoch: int) -> list[External]:
        async with self._commits:
            await self._commits.wait_for(lambda: self._commits_done >= epoch)
        try:
            for record in list(self.records.values()):
                if record.epoch <= epoch and record.outcome == Outcome.PENDING:
                    await record.settled.wait()
            return await self._commit_turn()
        finally:
            async with self._commits:
                self._commits_done = epoch + 1
                self._commits.notify_all()

    async def _commit_turn(self) -> list[External]:
        turn_id = self.turn_id
        if turn_id is None or not self.turn_used:
            return []
        kept = [r for r in self.records.values() if r.turn_id == turn_id
                and r.outcome == Outcome.OK]
        self.trace.add("commit_start", turn_id=turn_id, keep=[r.id for r in kept])
        try:
            turn = await self._commit_keeping(turn_id, kept)
        except GatewayError as error:
            if error.code != "commit_failed":
                raise
            self.turn_id, self.turn_used = None, False
            self.trace.add("commit_failed", turn_id=turn_id, error=str(error))
            return [Cancelled(r.id, f"the turn's commit failed: {error.message}")
                    for r in kept if r.end(Outcome.CANCELLED)]
        self.turn_id, self.turn_used = None, False
        told = record_commit(kept, turn["calls"])
        self.trace.add("commit_done", turn_id=turn_id, status=turn["status"],
                       calls={r.id: r.view["status"] for r in kept if r.view is not None})
        return told

    async def _commit_keeping(self, turn_id: str, kept: list[CallRecord]) -> dict[str, Any]:
        try:
            return await self.gateway.commit(self.session_id, turn_id, [str(r.id) for r in kept])
        except GatewayError as error:
            if error.code != "unknown_keep":
                raise
        await self.refresh()  # a kept call left the turn behind our back: it is reported
        keep = [str(r.id) for r in kept if r.outcome == Outcome.OK]
        return await self.gateway.commit(self.session_id, turn_id, keep)

    async def close(self, reason: str = "the agent stopped") -> None:
        """Stop every task; cancel the open turn if it holds calls nobody committed."""
        tasks = [r.task for r in self.records.values() if r.task is not None]
        tasks += list(self._side_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.turn_id is not None and self.turn_used:
            try:
                await self.gateway.cancel_turn(self.session_id, self.turn_id, reason)
                self.trace.add("turn_cancelled", turn_id=self.turn_id, reason=reason)
            except GatewayError as error:
                self.trace.add("gateway_error", op="cancel_turn", error=str(error))
            self.turn_id = None

    def _side(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
