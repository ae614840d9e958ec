"""`archlab study --storage postgresql://...`: two processes, each with its own folder as two machines would have,
share one study in a real PostgreSQL server and run every trial exactly once.

The test starts a throwaway server of its own (``initdb`` + ``pg_ctl`` from Debian's ``postgresql`` package, on a
Unix socket, no TCP port); it skips where the server binaries or the driver (psycopg2) are missing. ``.ci/run``
installs both. SQLite, the default storage, is tested in test_studies.py; a server has its own locking, which is
what taking "the next trial no one holds" relies on when the workers are on different machines.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from idx_data import tiny_idx_folder
from test_studies import ROOT, TINY_PLAIN, TINY_RES, micro_toml, study_file, trials

pytest.importorskip("psycopg2")


def _server_bin(name: str) -> str | None:
    """On PATH, else Debian's newest /usr/lib/postgresql/VERSION/bin (not on PATH there)."""
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return shutil.which(name) or (installed[-1] if installed else None)


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _server_bin("initdb"), _server_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    # PostgreSQL refuses to run as root: as root, the server runs as the package's `postgres` user, in a folder of
    # its own under /tmp (pytest's folders are private to the user who runs the tests).
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="archlab-pg-"))
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(folder, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = str(50000 + os.getpid() % 10000)
    data = folder / "data"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "archlab"], check=True,
                       capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                        f"-k {folder} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {(exc.stderr or b'').decode().strip()[-300:]}")
    yield f"postgresql+psycopg2://archlab@/postgres?host={folder}&port={port}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_two_machines_share_one_postgres_study_and_run_every_trial_once(tmp_path, postgres_url) -> None:
    data = tiny_idx_folder(tmp_path / "fm", train=100, test=20)
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, ""), ("plain", TINY_PLAIN, "")], seeds="[0, 1, 2]"))
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "archlab", "study", str(path), "--data", str(data), "--out",
                               str(out), "--storage", postgres_url, "--json"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in machines]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    expected = sorted(f"{arm}|seed={s}" for arm in ("res", "plain") for s in (0, 1, 2))
    # Each trial is trained on exactly one machine: its run folder exists under one --out only.
    trained = sorted(f"{p.parent.name}|seed={p.name.removeprefix('seed')}"
                     for out in machines for p in (out / "trials").glob("*/seed*") if (p / "checkpoint.pt").is_file())
    assert trained == expected
    # The storage holds each trial complete exactly once. Two machines starting at the same instant may both enqueue
    # the plan (the engine's documented race, archlab.studies.engine): every extra copy is pruned as a duplicate of
    # a trial of its own key, never run. Whichever machine finished last reports all six.
    stored = trials(machines[0])
    complete = sorted(t.user_attrs["key"] for t in stored if t.state.name == "COMPLETE")
    assert complete == expected
    by_number = {t.number: t for t in stored}
    for t in stored:
        if t.state.name != "COMPLETE":
            assert t.state.name == "PRUNED", (t.number, t.state.name)
            assert by_number[t.user_attrs["duplicate_of"]].user_attrs["key"] == t.user_attrs["key"]
    assert max(r["progress"]["done"] for r in results) == 6
    assert all(not r["missing"] for r in results if r["progress"]["done"] == 6)



def test_workers_starting_at_once_on_a_fresh_database_all_open_it(postgres_url) -> None:
    """Optuna creates its tables on first use; four workers doing that at once on an empty PostgreSQL database
    raced (3 of 24 openings failed with a unique-constraint error before open_storage retried)."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    opener = ("import sys; from archlab.studies.engine import open_storage; "
              "open_storage(sys.argv[1], 60, 120, lambda *a: None); print('opened')")
    for round_ in range(3):
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE fresh{round_}"))
        url = postgres_url.replace("/postgres?", f"/fresh{round_}?")
        procs = [subprocess.Popen([sys.executable, "-c", opener, url], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "opened", err
    admin.dispose()
