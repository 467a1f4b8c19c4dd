"""The one error a configuration raises: every problem found, each naming its field."""

from __future__ import annotations


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field and the problem."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid pgmaint configuration ({source}):\n{lines}")
