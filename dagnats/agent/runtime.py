"""The agent runtime: runs an `agent_loop` step turn by turn, recording every turn as events.

Each activation rebuilds the transcript from the run's history, so a crash or a pause for an
operator costs nothing: tool calls whose results are recorded never run again, and a model
call that was in flight is simply made again. A tool call listed in `approve_tools` parks the
loop (the task ends) until an operator decides; the engine then hands the step back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dagnats.core.definition import AGENT_TASK, DEFAULT_MODELS, PLANNER_TASK, AgentConfig, PlannerConfig
from dagnats.core.durations import format_duration, parse_duration
from dagnats.core.events import AgentContinuing, AgentTurnRecorded, ApprovalRequested, ToolResultRecorded
from dagnats.core.state import RunState, Turn
from dagnats.nats.store import Store
from dagnats.ports import TooLarge, ValueTooLarge, fit_event, resolve_turns
from dagnats.worker import SUSPEND, NonRetryable, TaskContext, TaskFailed, Worker

from .providers import Message, ProviderError, ToolCall, ToolSpec, complete
from .tools import Toolbox

_LIVE_CHARS = 32_768  # characters of streamed text per live message (at most 128 kB of UTF-8)
_Recorded = TypeVar("_Recorded", AgentTurnRecorded, ToolResultRecorded)


def agent_worker(workspace_root: Path) -> Worker:
    """The built-in worker that serves agent_loop steps, with workspaces under `workspace_root`."""
    worker = Worker(name="agent")

    @worker.task(AGENT_TASK)
    async def agent_loop(ctx: TaskContext) -> Any:
        await ctx.announce()  # the loop records turns and approvals of a running step
        return await AgentLoop(ctx, workspace_root).run()

    @worker.task(PLANNER_TASK)
    async def planner(ctx: TaskContext) -> Any:
        await ctx.announce()
        return await write_plan(ctx)

    return worker


PLAN_TOOL = ToolSpec(
    name="submit_plan",
    description="Submit the plan: the steps to run, each a task with an id and optional depends_on.",
    parameters={
        "type": "object",
        "required": ["steps"],
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "task"],
                    "properties": {
                        "id": {"type": "string", "description": "letters, digits, - or _"},
                        "task": {"type": "string"},
                        "depends_on": {"type": "array", "items": {"type": "string"}},
                        "config": {"type": "object"},
                        "input": {},
                    },
                },
            }
        },
    },
)


async def write_plan(ctx: TaskContext) -> Any:
    """Ask the model for a plan through the submit_plan tool; the engine checks and runs it."""
    cfg = msgspec.convert(ctx.config, PlannerConfig)
    assert cfg.provider is not None
    prompt = cfg.prompt if cfg.prompt is not None else ctx.input
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    if cfg.allowed_tasks:
        text += "\n\nAllowed tasks: " + ", ".join(cfg.allowed_tasks) + f". At most {cfg.max_steps} steps."
    try:
        answer = await complete(
            cfg.provider,
            _with_model(ctx.config, cfg.provider),
            cfg.system,
            [Message(role="user", text=text)],
            [PLAN_TOOL],
            turn=0,
        )
    except ProviderError as exc:
        raise (TaskFailed(str(exc)) if exc.retryable else NonRetryable(str(exc))) from None
    plans = [c.arguments for c in answer.tool_calls if c.name == PLAN_TOOL.name]
    if not plans:
        raise TaskFailed("the model answered without calling submit_plan")
    return plans[0]


class AgentLoop:
    def __init__(self, ctx: TaskContext, workspace_root: Path) -> None:
        self.ctx = ctx
        try:
            self.cfg = msgspec.convert(ctx.config, AgentConfig)
        except msgspec.ValidationError as exc:
            raise NonRetryable(f"agent_loop config: {exc}") from None
        self.workspace_root = workspace_root
        store = ctx._store
        assert store is not None
        self.store: Store = store

    async def run(self) -> Any:
        state = await self.store.current_state(self.ctx.run_id)
        assert state is not None
        # big texts, arguments and results are references in the state: the model sees them whole
        turns = list(await resolve_turns(self.store, state.steps[self.ctx.step_id].turns))
        toolbox = Toolbox(
            self.cfg.tools,
            self._workdir(),
            self.store.tools,
            parse_duration(self.cfg.command_timeout),
        )
        specs = await toolbox.specs()
        started = state.steps[self.ctx.step_id].started_at or time.time()
        while True:
            if turns and turns[-1].pending_calls:
                turns[-1] = await self._settle_calls(state, len(turns) - 1, turns[-1], toolbox)
                if turns[-1].pending_calls:
                    return SUSPEND  # waits for an operator; the engine resumes the step
            if turns and not turns[-1].tool_calls:
                return _output(turns)
            if self.cfg.continue_as_new_after_turns and len(turns) >= self.cfg.continue_as_new_after_turns:
                return await self._hand_over(turns)
            self._check_bounds(turns, started)
            turn = await self._model_turn(turns, specs)
            turns.append(turn)

    async def _hand_over(self, turns: list[Turn]) -> Any:
        """Let a new run carry on: it gets the last message and a pointer to this transcript."""
        ctx = self.ctx
        carry = {
            "summary": turns[-1].text,
            "transcript": {"run_id": ctx.run_id, "step_id": ctx.step_id, "turns": len(turns)},
        }
        event = AgentContinuing(at=time.time(), step_id=ctx.step_id, attempt=ctx.attempt, carry=carry)
        await self.store.append(ctx.run_id, event, msg_id=f"{ctx.run_id}:continuing:{ctx.step_id}")
        return SUSPEND

    def _workdir(self) -> Path:
        path = (
            Path(self.cfg.workdir)
            if self.cfg.workdir
            else self.workspace_root / self.ctx.run_id / self.ctx.step_id
        )
        path = path.expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NonRetryable(f"agent_loop workdir {path}: {exc.strerror}") from None
        return path

    def _check_bounds(self, turns: list[Turn], started: float) -> None:
        cfg = self.cfg
        if len(turns) >= cfg.max_turns:
            raise NonRetryable(f"agent_loop reached max_turns ({cfg.max_turns}) without a final answer")
        if cfg.max_duration is not None:
            limit = parse_duration(cfg.max_duration)
            if time.time() - started > limit:
                raise NonRetryable(f"agent_loop exceeded max_duration ({format_duration(limit)})")
        if cfg.max_total_tokens is not None:
            used = sum(t.usage.get("input_tokens", 0) + t.usage.get("output_tokens", 0) for t in turns)
            if used >= cfg.max_total_tokens:
                raise NonRetryable(
                    f"agent_loop used {used} tokens, reaching max_total_tokens ({cfg.max_total_tokens})"
                )

    async def _model_turn(self, turns: list[Turn], specs: list[Any]) -> Turn:
        ctx, cfg = self.ctx, self.cfg

        async def on_text(chunk: str) -> None:  # for the console; nothing waits for it
            for at in range(0, len(chunk), _LIVE_CHARS):  # a long text in pieces that fit a message
                await self.store.publish_live(ctx.run_id, ctx.step_id, chunk[at : at + _LIVE_CHARS].encode())

        try:
            answer = await complete(
                cfg.provider,
                _with_model(ctx.config, cfg.provider),
                cfg.system,
                self._messages(turns),
                specs,
                turn=len(turns),
                on_text=on_text,
            )
        except ProviderError as exc:
            raise (TaskFailed(str(exc)) if exc.retryable else NonRetryable(str(exc))) from None
        calls = [msgspec.to_builtins(c) for c in answer.tool_calls]
        usage = msgspec.to_builtins(answer.usage)
        event = AgentTurnRecorded(
            at=time.time(),
            step_id=ctx.step_id,
            attempt=ctx.attempt,
            turn=len(turns),
            text=answer.text,
            tool_calls=calls,
            usage=usage,
            stop_reason=answer.stop_reason,
        )
        event = await self._fitted(event, f"step {ctx.step_id}: turn {len(turns)}")
        await self.store.append(ctx.run_id, event, msg_id=f"{ctx.run_id}:turn:{ctx.step_id}:{len(turns)}")
        return Turn(
            text=answer.text, tool_calls=calls, usage=usage, stop_reason=answer.stop_reason, at=event.at
        )

    async def _settle_calls(self, state: RunState, index: int, turn: Turn, toolbox: Toolbox) -> Turn:
        """Run the turn's unanswered tool calls in order; stop at one that waits for an operator."""
        for call in turn.pending_calls:
            verdict = await self._permission(state, index, call)
            if verdict is None:
                return turn
            if verdict is True:
                context = {"run_id": self.ctx.run_id, "step_id": self.ctx.step_id, "call_id": call["id"]}
                result, is_error = await toolbox.call(call["name"], call.get("arguments") or {}, context)
            else:
                result, is_error = str(verdict), True  # a denial text
            turn = await self._record_result(index, turn, call, result, is_error)
        return turn

    async def _permission(self, state: RunState, index: int, call: dict[str, Any]) -> bool | str | None:
        """True to run the call, a denial text to report instead, None to wait for an operator."""
        needs = self.cfg.approve_tools == "all" or call["name"] in self.cfg.approve_tools
        if not needs:
            return True
        approval_id = f"{self.ctx.step_id}.{index}.{call['id']}"
        approval = state.approvals.get(approval_id)
        if approval is None:
            await self._ask(approval_id, call)
            return None
        if approval.status == "pending":
            return None
        if approval.status == "approved":
            return True
        why = f": {approval.comment}" if approval.comment else ""
        return (
            f"denied by {approval.by or 'an operator'}{why}"
            if approval.status == "denied"
            else "not approved"
        )

    async def _ask(self, approval_id: str, call: dict[str, Any]) -> None:
        ctx = self.ctx
        details = {"name": call["name"], "arguments": call.get("arguments") or {}, "call_id": call["id"]}
        event = ApprovalRequested(
            at=time.time(),
            approval_id=approval_id,
            step_id=ctx.step_id,
            kind="tool_call",
            attempt=ctx.attempt,
            prompt=f"Allow {call['name']}?",
            details=details,
        )
        await self.store.append(ctx.run_id, event, msg_id=f"{ctx.run_id}:approval:{approval_id}")

    async def _record_result(
        self, index: int, turn: Turn, call: dict[str, Any], result: str, is_error: bool
    ) -> Turn:
        ctx = self.ctx
        event = ToolResultRecorded(
            at=time.time(),
            step_id=ctx.step_id,
            attempt=ctx.attempt,
            turn=index,
            call_id=call["id"],
            name=call["name"],
            result=result,
            is_error=is_error,
        )
        event = await self._fitted(event, f"step {ctx.step_id}: result of {call['name']}")
        await self.store.append(
            ctx.run_id, event, msg_id=f"{ctx.run_id}:tool:{ctx.step_id}:{index}:{call['id']}"
        )
        from dagnats.core.state import ToolResult

        results = {
            **turn.results,
            call["id"]: ToolResult(name=call["name"], result=result, is_error=is_error),
        }
        return msgspec.structs.replace(turn, results=results)

    async def _fitted(self, event: _Recorded, what: str) -> _Recorded:
        """The event with its values over the message limit in the object store (written
        first); a turn or result that cannot be recorded ends the step."""
        try:
            return await fit_event(self.store, event, what)
        except ValueTooLarge as exc:
            raise NonRetryable(str(exc)) from None
        except TooLarge as exc:
            raise NonRetryable(f"{what}: {exc}") from None

    def _messages(self, turns: list[Turn]) -> list[Message]:
        """The conversation so far, rebuilt from the recorded turns."""
        step_input, carry = self.ctx.input, None
        if isinstance(step_input, dict) and set(step_input) == {"carry", "input"}:  # a handed-over loop
            step_input, carry = step_input["input"], step_input["carry"]
        prompt = self.cfg.prompt if self.cfg.prompt is not None else step_input
        first = prompt if isinstance(prompt, str) else json.dumps(prompt)
        if isinstance(carry, dict):
            where = carry.get("transcript", {})
            first += (
                f"\n\nYou are continuing earlier work ({where.get('turns')} turns in run {where.get('run_id')}). "
                f"Your last message then was: {carry.get('summary', '')}"
            )
        messages = [Message(role="user", text=first)]
        for turn in turns:
            calls = [
                ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments") or {})
                for c in turn.tool_calls
            ]
            messages.append(Message(role="assistant", text=_str(turn.text), tool_calls=calls))
            for c in turn.tool_calls:
                r = turn.results[c["id"]]
                messages.append(
                    Message(role="tool", text=_str(r.result), tool_call_id=c["id"], is_error=r.is_error)
                )
        return messages


def _str(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # read back: always a str


def _with_model(config: dict[str, Any], provider: str) -> dict[str, Any]:
    return config if config.get("model") else {**config, "model": DEFAULT_MODELS[provider]}


def _output(turns: list[Turn]) -> dict[str, Any]:
    usage = {
        "input_tokens": sum(t.usage.get("input_tokens", 0) for t in turns),
        "output_tokens": sum(t.usage.get("output_tokens", 0) for t in turns),
    }
    return {"text": turns[-1].text, "turns": len(turns), "usage": usage}
