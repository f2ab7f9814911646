"""What the console knows, kept apart from how it is drawn: run summaries with the current
filter and status tab, the approvals inbox, and the approval a screen shows. Plain Python, so
it is tested without a terminal and updated at any rate without touching the screen."""

from __future__ import annotations

from collections.abc import Iterable

from dagnats.api.client import PendingApproval, RunSummary

TABS: dict[str, str] = {
    "all": "All",
    "active": "Active",
    "needs_you": "Needs you",
    "failed": "Failed",
    "done": "Done",
    "cancelled": "Cancelled",
}


def in_tab(summary: RunSummary, tab: str) -> bool:
    status = summary.status
    if tab == "active":
        return status in ("pending", "running", "waiting")
    if tab == "needs_you":
        return summary.approvals > 0
    if tab == "failed":
        return status == "failed"
    if tab == "done":
        return status in ("completed", "continued")
    if tab == "cancelled":
        return status == "cancelled"
    return True


def matches(summary: RunSummary, text: str) -> bool:
    """Filter text: every word must appear in the run id, workflow or status."""
    hay = f"{summary.run_id} {summary.workflow} {summary.status}".lower()
    return all(word in hay for word in text.lower().split())


class RunsModel:
    """Run summaries by id, and the ordered, filtered view of them that the table shows.

    Updates only mark the view stale; it is rebuilt once, when it is next read, so a burst of
    a thousand updates costs one sort."""

    def __init__(self) -> None:
        self.runs: dict[str, RunSummary] = {}
        self.older = False  # older runs exist than the console was given (`dagnats run list`)
        self.tab = "all"
        self.filter_text = ""
        self._view: list[str] | None = None
        self._index: dict[str, int] = {}

    def update(self, summaries: Iterable[RunSummary]) -> None:
        for summary in summaries:
            self.runs[summary.run_id] = summary
        self._view = None

    def set_tab(self, tab: str) -> None:
        self.tab = tab
        self._view = None

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self._view = None

    @property
    def view(self) -> list[str]:
        if self._view is None:
            chosen = [
                s
                for s in self.runs.values()
                if in_tab(s, self.tab) and (not self.filter_text or matches(s, self.filter_text))
            ]
            chosen.sort(key=lambda s: (-s.created_at, s.run_id))
            self._view = [s.run_id for s in chosen]
            self._index = {rid: i for i, rid in enumerate(self._view)}
        return self._view

    def index_of(self, run_id: str | None) -> int | None:
        self.view  # noqa: B018 - rebuilds the index when stale
        return self._index.get(run_id) if run_id else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TABS, 0)
        for summary in self.runs.values():
            for tab in TABS:
                if in_tab(summary, tab):
                    counts[tab] += 1
        return counts

    @property
    def waiting_on_operator(self) -> int:
        return sum(s.approvals for s in self.runs.values())


class Inbox:
    """Pending approvals across all runs, oldest first, replaced run by run."""

    def __init__(self) -> None:
        self.by_run: dict[str, list[PendingApproval]] = {}

    def replace(self, run_id: str, pending: list[PendingApproval]) -> None:
        if pending:
            self.by_run[run_id] = pending
        else:
            self.by_run.pop(run_id, None)

    @property
    def items(self) -> list[PendingApproval]:
        out = [p for pending in self.by_run.values() for p in pending]
        return sorted(out, key=lambda p: (p.approval.requested_at, p.run_id, p.approval.approval_id))

    def __len__(self) -> int:
        return sum(len(p) for p in self.by_run.values())


LOOK_AGAIN = 1.0  # seconds an approval stays under the cursor before y or n may decide it


class Shown:
    """The approval a screen shows under its cursor, as drawn, and since when. y and n decide
    this one, quoting its digest, and only once it has been there `LOOK_AGAIN` seconds: an item
    that has just taken the place of another is not what the operator read."""

    def __init__(self) -> None:
        self.item: PendingApproval | None = None
        self.since = float("-inf")

    def show(self, item: PendingApproval | None, now: float) -> None:
        if _identity(item) != _identity(self.item):
            self.since = now
        self.item = item

    def settled(self, now: float) -> bool:
        return now - self.since >= LOOK_AGAIN


def _identity(p: PendingApproval | None) -> tuple[str, str, str] | None:
    return None if p is None else (p.run_id, p.approval.approval_id, p.digest)
