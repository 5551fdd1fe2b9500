"""The notes sink's job: write a conversation's changed notes to Pipedrive."""

from __future__ import annotations

from service import queue
from service.context import Services
from service.queue import JobContext
from service.sinks import notes


async def notes_flush(ctx: JobContext, payload: queue.NotesPayload) -> int:
    """Write every note window of the conversation whose lines changed; returns how many."""
    svc: Services = ctx["services"]
    return await notes.flush(svc, payload, str(ctx["job_id"]))
