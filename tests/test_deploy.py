"""The production image (Dockerfile, docs/deploy.md), checked without a Docker engine.

No Docker engine is available where the tests run, so the image is never built here. What can be
checked is: the base image's Airflow and Python are the ones requirements.txt was frozen with;
every requirement it installs is pinned; every file it COPYs exists in the build context that
.dockerignore leaves; and that build context, laid out where the Dockerfile puts it with the
Dockerfile's ENV and nothing else, parses the three DAGs, finds the state-schema migrations and
runs the doctor CLI, in a fresh interpreter that cannot see this checkout.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_HOME = "/opt/airflow"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def env_of_image() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==([^\s;]+)", line)
        assert match, f"requirements.txt: {line!r} is not pinned as name==version"
        pins[match.group(1).lower().replace("_", "-")] = match.group(3)
    return pins


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [p.strip().rstrip("/") for p in lines if p.strip() and not p.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule for the patterns .dockerignore uses: a pattern matches the path or one of its
    parents; `**/x` matches x at any depth."""
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            candidates = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
        else:
            tail = pattern
            candidates = ["/".join(parts[:j]) for j in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(c, tail) for c in candidates):
            return True
    return False


def build_context() -> list[str]:
    """Relative paths of the files `docker build .` would send (tracked and untracked files, as on disk)."""
    patterns = ignore_patterns()
    files = []
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_root + d, patterns)]
        files += [rel_root + n for n in names if not ignored(rel_root + n, patterns)]
    return sorted(files)


def test_the_base_image_is_the_airflow_and_python_requirements_txt_was_frozen_with():
    [(word, arg)] = [(w, a) for w, a in instructions() if w == "ARG" and a.startswith("AIRFLOW_IMAGE=")]
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", image)
    assert match, image
    pins = requirement_pins()
    assert match.group(1) == pins["apache-airflow"] == pins["apache-airflow-core"]
    assert match.group(2) == f"{sys.version_info.major}.{sys.version_info.minor}"  # the tests' interpreter
    assert [a for w, a in instructions() if w == "FROM"] == ["${AIRFLOW_IMAGE}"]


def test_it_installs_exactly_the_pinned_requirements_txt():
    steps = instructions()
    runs = [a for w, a in steps if w == "RUN"]
    assert runs == [f"pip install --no-cache-dir -r {IMAGE_HOME}/requirements.txt"]
    copies = [a for w, a in steps if w in ("COPY", "ADD")]
    assert f"--chown=airflow:0 requirements.txt {IMAGE_HOME}/requirements.txt" in copies
    # the requirements COPY comes before the install, the project after it (code changes keep the package layer)
    order = [w + " " + a for w, a in steps if w in ("COPY", "RUN")]
    assert (
        order.index(f"RUN {runs[0]}")
        == order.index(f"COPY --chown=airflow:0 requirements.txt {IMAGE_HOME}/requirements.txt") + 1
    )
    assert len(requirement_pins()) > 100  # the whole freeze, not a hand-picked subset


def test_every_copied_file_is_in_the_build_context_and_local_state_is_not():
    context = build_context()
    for word, arg in instructions():
        if word not in ("COPY", "ADD"):
            continue
        *sources, _dest = [a for a in shlex.split(arg) if not a.startswith("--")]
        for source in sources:
            if source == ".":
                continue
            assert source.rstrip("/") in context or any(f.startswith(source.rstrip("/") + "/") for f in context), source
    for needed in (
        "requirements.txt",
        "airflow_settings.yaml",
        "dags/partition_maintenance.py",
        "dags/default_partition_migration.py",
        "dags/partition_watchdog.py",
        "include/config/pgmaint.yaml",
        "include/pgmaint/config/load.py",
        "docs/deploy.md",
        "docs/security.md",
        "include/sql/roles/pgmaint_role.sql",
    ):
        assert needed in context, needed
    assert all(f"include/sql/{p.name}" in context for p in (REPO / "include" / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    for never in (".venv/", ".airflow/", ".pgmaint/", ".pytest-airflow/", ".git/", "tests/"):
        assert not [f for f in context if f.startswith(never)], never
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]


def test_the_context_laid_out_as_in_the_image_parses_the_dags_and_runs_the_doctor(tmp_path):
    """Only the build context, at AIRFLOW_HOME with the Dockerfile's ENV: a fresh interpreter
    (the same pinned packages) imports pgmaint from there, not from this checkout."""
    home = tmp_path / IMAGE_HOME.strip("/")
    for rel in build_context():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, home / rel)
    env = {k: v.replace(IMAGE_HOME, str(home)) for k, v in env_of_image().items()}
    assert set(env) >= {"AIRFLOW_HOME", "PYTHONPATH", "PGMAINT_CONFIG", "AIRFLOW__CORE__DAGS_FOLDER"}
    env.update(
        PATH=os.environ["PATH"],
        HOME=str(tmp_path),
        LANG="C.UTF-8",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db",
    )
    probe = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
import include.pgmaint
from include.pgmaint.state import migrations
bag = DagBag(dag_folder={str(home / "dags")!r})
print(json.dumps({{"pgmaint": list(include.pgmaint.__path__)[0], "dags": sorted(bag.dags), "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
                  "migrations": [name for _, name, _ in migrations()], "repo_on_path": [p for p in sys.path if p.startswith({str(REPO)!r}) and not p.startswith({str(REPO / ".venv")!r})]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["pgmaint"].startswith(str(home)) and seen["repo_on_path"] == [], seen
    assert seen["errors"] == {}
    assert seen["dags"] == ["default_partition_migration", "partition_maintenance", "partition_watchdog"]
    assert seen["migrations"] == sorted(p.name for p in (REPO / "include" / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    doctor = subprocess.run(
        [sys.executable, "-m", "include.pgmaint.doctor", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doctor.returncode == 0 and "CONNINFO" in doctor.stdout, doctor.stderr[-2000:]
