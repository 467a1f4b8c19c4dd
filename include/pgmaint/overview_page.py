"""HTML of the Partitions view: the dict from `overview.gather`, drawn. Pure (no database, no Airflow).

Server-rendered, no build step and no script needed to read it; every value is escaped.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape

from include.pgmaint.overview import AHEAD, CURRENT, EXPIRED, GAP, KINDS, MISSING, RETAINED, attention

COLOURS = {
    EXPIRED: "#9e9e9e",
    RETAINED: "#81c784",
    CURRENT: "#2e7d32",
    AHEAD: "#64b5f6",
    GAP: "#ffb74d",
    MISSING: "#e53935",
}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#1a1a1a;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:0}
.muted{color:#666} a{color:#0b5cad}
.card{border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.badges span{display:inline-block;border-radius:10px;padding:1px 8px;margin:2px 4px 2px 0;font-size:12px;background:#eee}
.bad{background:#fde0dc!important;color:#b71c1c} .warn{background:#fff3e0!important;color:#8a4b00} .ok{background:#e8f5e9!important;color:#1b5e20}
.bar{position:relative;height:26px;background:#fafafa;border:1px solid #ccc;margin:8px 0 2px}
.seg{position:absolute;top:0;bottom:0;border-right:1px solid #fff;box-sizing:border-box}
.seg.gap,.seg.missing{background-image:repeating-linear-gradient(45deg,rgba(255,255,255,.35) 0 4px,transparent 4px 8px)}
.now{position:absolute;top:-4px;bottom:-4px;width:2px;background:#000}
.cut{position:absolute;top:-4px;bottom:-4px;width:0;border-left:2px dashed #555}
.dflt{position:relative;height:12px;margin:0 0 2px}
.dflt div{position:absolute;top:0;bottom:0;min-width:3px;background:#6a1b9a}
.axis{display:flex;justify-content:space-between;font-size:11px;color:#666}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
table{border-collapse:collapse;margin:6px 0} td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}
.sev-critical{color:#b71c1c;font-weight:600} .sev-warning{color:#8a4b00;font-weight:600}
.migrate{background:#f3e5f5;border-left:4px solid #6a1b9a;padding:8px;margin-top:8px}
code,pre{font:12px ui-monospace,monospace;background:#f5f5f5;padding:1px 4px}
.msg{white-space:pre-wrap;max-width:900px}
"""


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _t(iso: str | None) -> str:
    """`2026-12-01T00:00:00Z` -> `2026-12-01 00:00` (UTC)."""
    return "" if not iso else iso.replace("T", " ")[:16]


def _pos(iso: str, start: datetime, span: float) -> float:
    return max(0.0, min(100.0, (_dt(iso) - start).total_seconds() / span * 100))


def _dt(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _default_dt(text: str) -> datetime:
    """The DEFAULT's min/max as PostgreSQL printed them (`2026-11-29 00:00:00+00`)."""
    text = text.strip()
    if len(text) >= 3 and text[-3] in "+-" and text[-2:].isdigit():
        text += ":00"
    return datetime.fromisoformat(text.replace(" ", "T", 1))


def legend() -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{COLOURS[k]}"></i>{_e(label)}</span>' for k, label in KINDS.items())
        + '<span><i style="background:#6a1b9a"></i>rows waiting in the DEFAULT (first to last)</span></div>'
    )


def _bar(t: dict) -> str:
    tl = t["timeline"]
    start, end = _dt(tl["start"]), _dt(tl["end"])
    span = max((end - start).total_seconds(), 1.0)
    parts = []
    for s in tl["segments"]:
        left, right = _pos(s["lower"], start, span), _pos(s["upper"], start, span)
        what = s["name"] or KINDS[s["kind"]].split(":")[0]
        if s.get("partitions", 0) > 1:  # a run (`segments=runs`): its first and last partition
            what = f"{s['partitions']} partitions, {s['name']} to {s['last']}"
        rows = f", ~{s['rows']:,} rows" if s.get("rows") else ""
        tip = f"{what}: {_t(s['lower'])} to {_t(s['upper'])} ({KINDS[s['kind']]}{rows})"
        parts.append(
            f'<div class="seg {s["kind"]}" data-kind="{s["kind"]}" title="{_e(tip)}" '
            f'style="left:{left:.3f}%;width:{max(right - left, 0.2):.3f}%;background-color:{COLOURS[s["kind"]]}"></div>'
        )
    parts.append(
        f'<div class="now" title="now {_e(_t(tl["now"]))}" style="left:{_pos(tl["now"], start, span):.3f}%"></div>'
    )
    if tl.get("cutoff"):
        parts.append(
            f'<div class="cut" title="retention cutoff {_e(_t(tl["cutoff"]))}" '
            f'style="left:{_pos(tl["cutoff"], start, span):.3f}%"></div>'
        )
    out = f'<div class="bar" aria-label="partitions of {_e(t["name"])}">' + "".join(parts) + "</div>"
    d = t.get("default")
    if d and d["rows"] > 0 and d.get("min") and d.get("max"):
        lo = max(0.0, min(100.0, (_default_dt(d["min"]) - start).total_seconds() / span * 100))
        hi = max(0.0, min(100.0, (_default_dt(d["max"]) - start).total_seconds() / span * 100))
        out += (
            f'<div class="dflt"><div title="{d["rows"]:,} rows in the DEFAULT from {_e(d["min"])} to {_e(d["max"])}" '
            f'style="left:{lo:.3f}%;width:{max(hi - lo, 0.3):.3f}%"></div></div>'
        )
    out += (
        f'<div class="axis"><span>{_e(_t(tl["start"]))}</span><span>now {_e(_t(tl["now"]))} UTC</span>'
        f"<span>{_e(_t(tl['end']))}</span></div>"
    )
    return out


def _badges(t: dict) -> str:
    b = []
    rw = t["runway"]
    if not rw["current"]:
        b.append(("bad", "missing runway: no partition for the current interval"))
    elif rw["ahead"] < min(rw["premake"], 2):
        b.append(("bad" if rw["ahead"] == 0 else "warn", f"runway: {rw['ahead']} of {rw['premake']} partitions ahead"))
    else:
        b.append(("ok", f"runway: {rw['ahead']} of {rw['premake']} partitions ahead"))
    if rw["missing_intervals"]:
        b.append(("bad", f"{rw['missing_intervals']} interval(s) missing up to the premake horizon"))
    d = t.get("default")
    if d is None:
        b.append(("", "no DEFAULT partition"))
    elif d["rows"] > 0:
        amount = f"{d['rows']:,} rows" if d["exact"] else f"about {d['rows']:,} rows (estimate)"
        span = f" from {d['min']} to {d['max']}" if d.get("min") else ""
        b.append(("warn", f"DEFAULT: {amount} waiting{span}"))
    else:
        b.append(("ok", "DEFAULT: empty"))
    if t["expired_attached"]:
        b.append(("warn", f"{t['expired_attached']} expired partition(s) still attached"))
    if t["gaps"]:
        b.append(("warn", f"{t['gaps']} gap(s) between partitions"))
    return '<div class="badges">' + "".join(f'<span class="{c}">{_e(text)}</span>' for c, text in b) + "</div>"


def _conditions(items: list[dict]) -> str:
    if not items:
        return '<p class="muted">No open watchdog condition.</p>'
    rows = "".join(
        f'<tr><td class="sev-{_e(c["severity"])}">{_e(c["severity"])}</td><td><code>{_e(c["key"])}</code></td>'
        f"<td>open {_e(c['age'])}{' · paged' if c['paged'] else ''}</td>"
        f'<td class="msg">{_e(c["message"])}</td><td><a href="{_e(c["runbook"])}" target="_blank">runbook</a></td></tr>'
        for c in items
    )
    return (
        "<table><tr><th>severity</th><th>condition</th><th>age</th><th>message</th><th></th></tr>" + rows + "</table>"
    )


def _leases(items: list[dict]) -> str:
    if not items:
        return '<p class="muted">No service paused.</p>'
    rows = "".join(
        f"<tr><td><b>{_e(x['service'])}</b> ({_e(x['kind'])})</td><td>{_e(x['state'])}</td>"
        f'<td>paused by <a href="{_e(x["run_url"])}" target="_top">{_e(x["paused_by"])}</a></td>'
        f"<td>since {_e(_t(x['paused_at']))}</td><td>until {_e(_t(x['lease_until']))}"
        f"{' <b>(expired)</b>' if x['expired'] else ''}</td><td>{_e(x['reason'])}</td></tr>"
        for x in items
    )
    return (
        "<table><tr><th>service</th><th>state</th><th>who</th><th>paused</th><th>lease</th><th>reason</th></tr>"
        + rows
        + "</table>"
    )


def _runs(t: dict) -> str:
    rows = []
    for job in ("maintenance", "migration"):
        r = t["runs"].get(job)
        if not r:
            rows.append(f"<tr><td>last {job}</td><td class='muted' colspan=3>none in the journal</td></tr>")
            continue
        link = (
            f'<a href="{_e(r["url"])}" target="_top">{_e(r["dag_id"])} / {_e(r["dag_run_id"])}</a>'
            if r["url"]
            else _e(r["dag_id"] or "outside Airflow")
        )
        error = f'<div class="msg muted">{_e(r["error"])}</div>' if r["error"] else ""
        rows.append(
            f"<tr><td>last {job}</td><td><b>{_e(r['outcome'])}</b></td>"
            f"<td>{_e(_t(r['finished_at'] or r['started_at']))}</td><td>{link}{error}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _migrate(t: dict) -> str:
    m = t.get("migrate")
    out = ""
    if t.get("migration"):
        g = t["migration"]
        out += (
            f'<div class="migrate">Migration {_e(g["migration_id"])} in progress: phase <b>{_e(g["phase"])}</b>, '
            f"{_e(g['rows_copied'])} rows copied, started {_e(_t(g['started_at']))}.</div>"
        )
    if m:
        out += (
            f'<div class="migrate"><b>Rows are waiting in the DEFAULT.</b> Move them with '
            f'<a href="{_e(m["dag_url"])}" target="_top"><code>{_e(m["dag_id"])}</code></a> and this conf: '
            f"<code>{_e(json.dumps(m['conf']))}</code> — "
            f'<a href="{_e(m["trigger_url"])}">open the prefilled trigger form</a><br>'
            f'<span class="muted">or from a shell:</span> <code>{_e(m["cli"])}</code></div>'
        )
    return out


def _summary_row(t: dict) -> str:
    if t["error"]:
        state = f'<span class="bad">{_e(t["error"])}</span>'
    else:
        state = _badges(t)
    worst = ", ".join(c["key"].split(":")[0] for c in t["conditions"])
    return (
        f'<tr><td><a href="?table={_e(t["name"])}">{_e(t["name"])}</a></td><td>{state}</td>'
        f"<td>{_e(worst)}</td><td>{len(t['leases']) or ''}</td></tr>"
    )


def render(data: dict, limit: int = 50) -> str:
    """Cards for the `limit` tables that most need a person (all when fewer), a summary line for the rest."""
    ordered = sorted(data["tables"], key=attention)
    shown, rest = ordered[:limit], ordered[limit:]
    cards = []
    for t in shown:
        head = (
            f'<h2>{_e(t["name"])}</h2><div class="muted">{_e(t["interval"])} partitions, premake {t["premake"]}, '
            f"retention {_e(t['retention'] or 'none (keep forever)')}, maintained by {_e(t['maintained_by'])}"
            f"{', writers: ' + _e(', '.join(t['writers'])) if t['writers'] else ''}</div>"
        )
        if t["error"]:
            body = f'<div class="badges"><span class="bad">{_e(t["error"])}</span></div>'
        else:
            body = _badges(t) + _bar(t)
        body += "<h3>Watchdog conditions</h3>" + _conditions(t["conditions"])
        body += "<h3>Service leases</h3>" + _leases(t["leases"])
        body += "<h3>Runs</h3>" + _runs(t) + _migrate(t)
        cards.append(f'<section class="card" data-table="{_e(t["name"])}">{head}{body}</section>')
    if rest:
        cards.append(
            f'<section class="card"><h2>{len(rest)} more table(s)</h2><p class="muted">the tables above need '
            f'attention first; <a href="?limit={len(ordered)}">show all {len(ordered)} in full</a></p>'
            "<table><tr><th>table</th><th>state</th><th>conditions</th><th>leases</th></tr>"
            + "".join(_summary_row(t) for t in rest)
            + "</table></section>"
        )
    note = f'<p class="warn">{_e(data["state"]["note"])}</p>' if data["state"]["note"] else ""
    db = ""
    if data["database_conditions"]:
        db = '<section class="card"><h2>Database</h2>' + _conditions(data["database_conditions"]) + "</section>"
    dags = " · ".join(f'<a href="{_e(url)}" target="_top">{_e(d)}</a>' for d, url in data["dags"].items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pgmaint partitions</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>pgmaint partitions</h1><div class='muted'>read {_e(_t(data['generated_at']))} UTC in "
        f"{data['elapsed_ms']:.0f} ms · {len(data['tables'])} table(s) · boundaries in {_e(data['timezone'])} · DAGs: {dags}"
        f" · <a href=''>reload</a> · <a href='api/overview'>JSON</a></div>"
        f"{note}{legend()}{db}{''.join(cards)}</body></html>"
    )


def trigger_page(dag_id: str, conf: dict, api_base: str, ui_base: str, plugin_base: str) -> str:
    """A prefilled trigger form: the conf, editable, posted to Airflow's REST API with the viewer's session."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>trigger " + _e(dag_id) + "</title>"
        f"<style>{CSS}</style></head><body><h1>Trigger <code>{_e(dag_id)}</code></h1>"
        "<p>The run below is sent to Airflow's REST API as you (the auth manager decides whether you may), "
        "and Airflow validates the conf against the DAG's Params before anything runs.</p>"
        f"<textarea id='conf' rows='6' cols='70'>{_e(json.dumps(conf, indent=2))}</textarea><br>"
        f"<button id='go'>Trigger</button> <a href='{_e(plugin_base.rstrip('/'))}/partitions'>back to the partitions</a>"
        "<p id='result' class='msg'></p><script>"
        f"const api={json.dumps(api_base.rstrip('/'))}, ui={json.dumps(ui_base.rstrip('/'))}, dag={json.dumps(dag_id)};"
        "document.getElementById('go').onclick=async()=>{const out=document.getElementById('result');let conf;"
        "try{conf=JSON.parse(document.getElementById('conf').value)}catch(e){out.textContent='conf is not JSON: '+e;return}"
        "const r=await fetch(api+'/api/v2/dags/'+encodeURIComponent(dag)+'/dagRuns',{method:'POST',credentials:'same-origin',"
        "headers:{'Content-Type':'application/json'},body:JSON.stringify({logical_date:null,conf})});"
        "const body=await r.json().catch(()=>({}));"
        "if(r.ok){const u=ui+'/dags/'+encodeURIComponent(dag)+'/runs/'+encodeURIComponent(body.dag_run_id);"
        "out.innerHTML='';const a=document.createElement('a');a.href=u;a.target='_top';a.textContent='run '+body.dag_run_id+' created ('+body.state+')';out.appendChild(a)}"
        "else{out.textContent='Airflow refused ('+r.status+'): '+JSON.stringify(body.detail||body)}};"
        "</script></body></html>"
    )
