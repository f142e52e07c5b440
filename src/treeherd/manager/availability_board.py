"""The latest availability report of each gateway, held in the manager's memory for the API.

Reports are measurements, not state: they are replaced every few seconds and are not worth a store
revision each. A report older than STALE_S is marked stale (its gateway stopped reporting).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from treeherd.model.availability import AvailabilityReport
from treeherd.runtime import utc_now

STALE_S = 60.0


class AvailabilityBoard:
    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._reports: dict[str, tuple[datetime, AvailabilityReport]] = {}
        self._clock = clock

    def put(self, report: AvailabilityReport) -> None:
        self._reports[report.gateway] = (self._clock(), report)

    def reports(self) -> list[tuple[AvailabilityReport, bool]]:
        """Every gateway's last report, by gateway name, with whether it is stale."""
        now = self._clock()
        return [
            (report, (now - received).total_seconds() > STALE_S)
            for _, (received, report) in sorted(self._reports.items())
        ]
