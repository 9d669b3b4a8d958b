"""Two `nnspec search` processes sharing one study on a real PostgreSQL server.

The server is a throwaway cluster: ``initdb`` in a temporary directory, started
with ``pg_ctl`` on a free local port (as the ``postgres`` user when the tests
run as root, since PostgreSQL refuses to run as root), stopped at the end.
Where no server can be started the test is skipped, and says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState
from search_specs import SPEC


def csv_rows(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed (pip install 'nnspec[postgres]')")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl); install Debian's postgresql package")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="nnspec-pg-")
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            postgres = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if runuser is None:
            pytest.skip("running as root and runuser is missing, so the server cannot run as 'postgres'")
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    init = subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip().splitlines()[-1:] or init.returncode}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run([*as_user, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w",
                            "-t", "60", "start"], capture_output=True, text=True)  # fmt: skip
    if start.returncode != 0:
        log = Path(root, "log").read_text() if Path(root, "log").exists() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {log.strip().splitlines()[-1:] }")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_searches_on_two_outs_share_one_study_in_postgresql(tmp_path, postgres_url):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    command = [sys.executable, "-m", "nnspec", "search", str(spec), "--storage", postgres_url, "--study", "shared",
               "--trials", "8"]  # fmt: skip
    processes = [subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for out in outs]  # fmt: skip
    results = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8
    # Each process trained some of them, in its own --out; both reports cover the whole study.
    local = [{int(p.name.split("-")[1]) for p in out.glob("trial-*")} for out in outs]
    assert all(local) and not (local[0] & local[1])
    assert local[0] | local[1] >= {t.number for t in finished}
    for out in outs:
        rows = [r for r in csv_rows(out) if r["state"] == "complete"]
        assert sorted(int(r["number"]) for r in rows) == sorted(t.number for t in finished)
        assert (out / "best.yaml").is_file() and (out / "report.md").is_file()


def test_machines_starting_together_on_a_fresh_database_all_get_in(tmp_path, postgres_url):
    """Optuna creates its tables on first contact; simultaneous first contacts race on CREATE."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE DATABASE fresh")
    url = postgres_url.rsplit("/", 1)[0] + "/fresh"
    opener = (
        "import sys, time; from pathlib import Path; from nnspec.search.storage import open_storage; "
        "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); open_storage(sys.argv[2], Path('.'), 10)"
    )
    import time

    start = str(time.time() + 3.0)  # all of them at once, once their imports are done
    processes = [subprocess.Popen([sys.executable, "-c", opener, start, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]  # fmt: skip
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, errors
