"""In which order services are paused and resumed.

``A depends_on B`` means A needs B running. So A is paused before B (nothing
is left running without what it needs), and B is resumed before A. The order
considers dependencies through services that are not in the list too
(A -> X -> B still pauses A before B), and breaks ties by the order of the
``services`` section, so the same config always gives the same order.
"""

from __future__ import annotations

from include.pgmaint.config import Config


def _depends(config: Config) -> dict[str, set[str]]:
    """Every service's transitive dependencies."""
    direct = {s.name: set(s.depends_on) for s in config.services}
    closure: dict[str, set[str]] = {}

    def visit(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name in closure:
            return closure[name]
        out: set[str] = set()
        for dep in direct.get(name, ()):
            if dep in seen:  # a cycle: config rejects these; do not loop here either
                continue
            out |= {dep} | visit(dep, seen | {name})
        closure[name] = out
        return out

    for name in direct:
        visit(name)
    return closure


def pause_order(config: Config, names) -> list[str]:
    """`names` (service names, any order, duplicates ignored) in pause order: dependents first."""
    position = {s.name: i for i, s in enumerate(config.services)}
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in position]
    if unknown:
        raise KeyError(f"not configured service(s): {', '.join(map(repr, unknown))}")
    deps = _depends(config)
    # edge A -> B when A (transitively) depends on B: A must be paused first
    waiting_on = {n: {m for m in wanted if m != n and n in deps[m]} for n in wanted}  # dependents of n still running
    order: list[str] = []
    pending = set(wanted)
    while pending:
        ready = sorted((n for n in pending if not (waiting_on[n] & pending)), key=position.__getitem__)
        if not ready:  # only possible with a cycle, which parse_config rejects
            raise ValueError(f"dependency cycle among {', '.join(sorted(pending))}")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def resume_order(config: Config, names) -> list[str]:
    """`names` in resume order: dependencies first (the reverse of pause_order)."""
    return list(reversed(pause_order(config, names)))
