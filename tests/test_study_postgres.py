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
    # The storage holds every trial once, complete; whichever machine finished last reports all six.
    assert [t.state.name for t in trials(machines[0])] == ["COMPLETE"] * 6
    assert max(r["progress"]["done"] for r in results) == 6
    assert all(not r["missing"] for r in results if r["progress"]["done"] == 6)

