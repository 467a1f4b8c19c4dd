"""Conditions (what a check saw just now), their remembered state, and the notifications they cause."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class Condition:
    """Something wrong, as one check saw it just now."""

    key: str  # stable: the same problem always has the same key
    severity: str  # warning | critical
    message: str  # for people: what, where, PIDs and queries
    details: dict = field(default_factory=dict, hash=False, compare=False)  # JSON-serialisable
    quiet: bool = False  # tell nobody until it pages (e.g. DEFAULT rows an auto migration should clear)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def as_dict(self) -> dict:
        return {
            "key": self.key,
            "severity": self.severity,
            "message": self.message,
            "details": self.details,
            "quiet": self.quiet,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Condition:
        return cls(d["key"], d["severity"], d["message"], d.get("details") or {}, bool(d.get("quiet")))


@dataclass(frozen=True)
class ConditionState:
    """One row of `<state_schema>.conditions`: the current (or last) episode of a condition."""

    key: str
    severity: str
    message: str
    details: dict
    first_seen: datetime  # start of this episode
    last_seen: datetime
    streak: int = 1  # consecutive observations (failures, for task conditions) in this episode
    quiet: bool = False
    notified_at: datetime | None = None  # last message to the notify targets in this episode
    paged_at: datetime | None = None  # when the page was opened (None: not paged)
    last_page_at: datetime | None = None  # last page trigger (opening or re-notification)
    resolved_at: datetime | None = None  # None while active
    episodes: int = 1

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out

    @classmethod
    def from_json(cls, d: dict) -> ConditionState:
        kw = dict(d)
        for f in ("first_seen", "last_seen", "notified_at", "paged_at", "last_page_at", "resolved_at"):
            if kw.get(f):
                kw[f] = datetime.fromisoformat(kw[f])
        return cls(**{k: v for k, v in kw.items() if k in {f.name for f in fields(cls)}})


@dataclass
class Notification:
    key: str
    channel: str  # notify | page
    action: str  # notify: open, renotify, paged, resolve; page: trigger, retrigger, resolve
    severity: str
    message: str
    details: dict
    first_seen: datetime
    streak: int
    marks: dict = field(default_factory=dict)  # state fields to set when delivered
    delivered: bool | None = None  # True: at least one target took it (or there is no target)
    results: list[tuple[str, str | None]] = field(default_factory=list)  # (target, error or None)
