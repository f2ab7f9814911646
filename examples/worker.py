"""A user worker: `dagnats worker examples.worker:worker` serves the tasks below."""

from __future__ import annotations

from dagnats import NonRetryable, TaskContext, Worker

worker = Worker()


@worker.task("word-count")
async def word_count(ctx: TaskContext) -> dict[str, int]:
    text = ctx.input.get("text") if isinstance(ctx.input, dict) else None
    if not isinstance(text, str):
        raise NonRetryable("word-count needs an input object with a 'text' string")
    await ctx.log(f"counting words of a {len(text)}-character text")
    return {"words": len(text.split())}
