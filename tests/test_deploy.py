"""End to end on a real Prefect server on PostgreSQL (SQLite when PostgreSQL cannot run here): deploy from
flows/prefect.yaml, a process worker, one run triggered through the API and one by a schedule,
the UI in headless Chromium.

One module fixture starts everything (`prefect server start`, work pool, blocks from the
environment, `prefect deploy`, `prefect worker start`), waits for both runs and stops every
process it started (process trees, by pid). Budget: ~2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from html import unescape
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefect_llmorch.testing.server import free_port, wait_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect") if (BIN / "prefect").exists() else "prefect"
ARTIFACTS = ROOT / "tests" / "artifacts"
DEADLINE = 170.0  # seconds for both runs, from the start of the worker


class Processes:
    """Processes this test started; `stop()` ends each one's whole tree, by pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            try:
                root = psutil.Process(p.pid)
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for q in tree:
                try:
                    q.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(tree, timeout=10)
            for q in alive:
                try:
                    q.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=5)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 90) -> str:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def _client(url: str):  # type: ignore[no-untyped-def]
    """A client of *this* server, whatever the session's Prefect settings (harness) say."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=url)


def _fingerprint(secret: str) -> str:
    sys.path.insert(0, str(ROOT))
    from prefect_llmorch.examples.e2e import fingerprint

    return fingerprint(secret)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The whole deployment, on a database of the session's PostgreSQL cluster (the production
    setup, docs/deploy.md), or on the server's default SQLite database when this machine
    cannot run PostgreSQL. One of the two, not both: the stack takes 80 s or more to build,
    and the other tests on `prefect server start` (guard, tool exits) run on both databases."""
    try:
        database_url = request.getfixturevalue("postgres").create_database(f"deploy_{uuid.uuid4().hex[:8]}")
    except pytest.skip.Exception as why:
        print(f"\nthe deployment on SQLite: {why}")
        database_url = None
    database = "postgres" if database_url else "sqlite"
    tmp = tmp_path_factory.mktemp(f"deploy-{database}")
    home = tmp / "prefect-home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    secret = f"e2e-SECRET-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLMORCH_", "OPENAI_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_UI_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        LLMORCH_REPO=str(ROOT),
        LLMORCH_PROCESSORS="2",
    )
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    procs = Processes(tmp)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        procs.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
        try:
            wait_healthy(url, timeout=150)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n" + procs.log("server")[-3000:]) from None
        timings["server"] = time.monotonic() - t0

        _run([PREFECT, "work-pool", "create", "llmorch", "--type", "process"], env)
        # Blocks from the environment, as a user would make them.
        _run([sys.executable, "blocks/register.py"], {**env, "LLMORCH_E2E_MASTER_PASSPHRASE": secret, "LLMORCH_SEARCH_API_KEY": "search-" + secret})
        out = _run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml"], env, timeout=120)
        assert "llmorch-run/e2e-seal" in out and "llmorch-ask/ask" in out
        # The KITTI deployment again, with a schedule that fires soon (the yaml's cron one is weekly).
        _run([PREFECT, "--no-prompt", "deploy", "--name", "kitti", "--interval", "10", "--prefect-file", "flows/prefect.yaml"], env, timeout=120)
        timings["deployed"] = time.monotonic() - t0

        procs.start("worker", [PREFECT, "worker", "start", "--pool", "llmorch", "--type", "process"], env)
        out = _run([PREFECT, "deployment", "run", "llmorch-run/e2e-seal"], env)
        m = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert m, out
        api_run = uuid.UUID(m.group(1))

        with _client(url) as client:
            kitti = client.read_deployment_by_name("llmorch-run/kitti")
            deadline = time.monotonic() + DEADLINE
            scheduled = None
            while True:
                if scheduled is None:
                    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[kitti.id])))
                    started = [r for r in runs if r.state is not None and r.state.type.value in ("RUNNING", "COMPLETED", "FAILED", "CRASHED")]
                    if started:
                        scheduled = min(started, key=lambda r: r.expected_start_time).id
                        client.pause_deployment(kitti.id)  # one scheduled run is enough
                states = {rid: client.read_flow_run(rid).state for rid in (api_run, scheduled) if rid is not None}
                if scheduled is not None and all(s is not None and s.is_final() for s in states.values()):
                    break
                assert time.monotonic() < deadline, f"runs not finished in time: {states}\nworker log:\n{procs.log('worker')[-4000:]}"
                time.sleep(1.0)
        timings["runs done"] = time.monotonic() - t0
        yield {"url": url, "api_run": api_run, "scheduled_run": scheduled, "secret": secret, "procs": procs, "env": env, "timings": timings, "tmp": tmp}
    finally:
        procs.stop()
        print(f"\ntimings (s from start): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def _artifacts(client: Any, run_id: uuid.UUID) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in arts if a.key}


def _task_runs(client: Any, run_id: uuid.UUID, expect: int) -> list[Any]:
    """The flow run's task runs once the server has recorded `expect` of them in final states.

    The server learns task states from events, which it records asynchronously: a finished
    flow run's task runs can read as Running for a moment."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        settled = len(runs) >= expect and all(r.state is not None and r.state.is_final() for r in runs)
        if settled or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def _result(artifact: Any) -> Any:
    m = re.search(r"```json\n(.*)\n```", str(artifact.data), re.S)
    assert m, artifact.data
    return json.loads(m.group(1))


def test_api_triggered_run(stack: dict[str, Any]) -> None:
    """`prefect deployment run llmorch-run/e2e-seal`: Completed, right result, tags, artifacts."""
    with _client(stack["url"]) as client:
        run = client.read_flow_run(stack["api_run"])
        assert run.state is not None and run.state.is_completed(), (run.state, stack["procs"].log("worker")[-3000:])
        assert run.auto_scheduled is False
        tasks = {t.name: t for t in _task_runs(client, run.id, 7)}
        assert set(tasks) == {"s1 · fetch_public_key", "s2 · fetch_public_key", "s3 · seal", "s4 · seal", "s5 · upload", "s6 · upload", "s7 · audit_digest"}
        # untagged: Prefect's engine made no tag-slot write for any call (engine/compiler.py)
        assert all(not t.tags for t in tasks.values())
        assert all(t.state is not None and t.state.is_completed() for t in tasks.values())
        # FRG edges: s7 uses s5 and s6
        ids = {t.id: name for name, t in tasks.items()}
        assert {ids[i.id] for i in tasks["s7 · audit_digest"].task_inputs["inputs"]} == {"s5 · upload", "s6 · upload"}
        arts = _artifacts(client, run.id)
        assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress", "llmorch-result"} <= set(arts)
        assert "| s3 | seal | compute | 2 | s1 | rank 2 |" in str(arts["llmorch-frg"].data)  # a table: the UI renders no mermaid
        assert float(arts["llmorch-progress"].data) == 100.0
        assert arts["llmorch-progress"].description.startswith("7 of 7 calls finished")
        rows = {r["call"]: r for r in json.loads(arts["llmorch-schedule"].data)}
        assert all(r["state"] == "Completed" for r in rows.values())
        # The secret reached `seal` in a compute worker process (not the flow's process, where inout calls run).
        flow_pid = rows["s1"]["pid"]
        assert rows["s3"]["pid"] != flow_pid and rows["s4"]["pid"] != flow_pid
        result = _result(arts["llmorch-result"])
        fp = _fingerprint(stack["secret"])
        assert len(result["digest"]) == 32
        assert [r.split(":")[1] for r in result["receipts"]] == ["alice", "bob"]
        assert all(f"from-key-{fp}" in r for r in result["receipts"])


def test_scheduled_run(stack: dict[str, Any]) -> None:
    """The kitti deployment's interval schedule started a run by itself; it completed."""
    with _client(stack["url"]) as client:
        run = client.read_flow_run(stack["scheduled_run"])
        assert run.auto_scheduled is True
        assert run.state is not None and run.state.is_completed(), (run.state, stack["procs"].log("worker")[-3000:])
        assert run.parameters["parameters"]["plan_file"] == "example:kitti"
        tasks = {t.name: t for t in _task_runs(client, run.id, 11)}
        assert len(tasks) == 11
        assert all(not t.tags for t in tasks.values())
        arts = _artifacts(client, run.id)
        assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress", "llmorch-result"} <= set(arts)
        assert float(arts["llmorch-progress"].data) == 100.0
        result = _result(arts["llmorch-result"])
        assert result.startswith("Summary (") and "objects on average" in result
        rows = json.loads(arts["llmorch-schedule"].data)
        assert {r["processor"] for r in rows if r["kind"] == "compute"} <= {0, 1}


def test_secret_is_not_stored_on_the_server(stack: dict[str, Any]) -> None:
    """The e2e-master passphrase is in no log, artifact, parameter or state of the run."""
    secret = stack["secret"]
    with _client(stack["url"]) as client:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        run = client.read_flow_run(stack["api_run"])
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        arts = _artifacts(client, run.id)
        tasks = _task_runs(client, run.id, 7)
        deployment = client.read_deployment(run.deployment_id)
        stored = {
            "flow run": run.model_dump_json(),
            "task runs": json.dumps([t.model_dump(mode="json") for t in tasks], ensure_ascii=False),
            "logs": json.dumps([log.model_dump(mode="json") for log in logs], ensure_ascii=False),
            "artifacts": json.dumps([a.model_dump(mode="json") for a in arts.values()], ensure_ascii=False),
            "deployment": deployment.model_dump_json(),
        }
    # Positive controls: what we read is the real thing.
    assert "plan of 7 calls" in stored["logs"] and len(logs) >= 5
    assert _fingerprint(secret) in stored["artifacts"]
    assert "example:e2e" in stored["flow run"]  # the plan file parameter (flows/prefect.yaml)
    for what, blob in stored.items():
        assert secret not in blob, f"the tool secret leaked into the {what}"
    # Nor in the worker's own output (its console log of the flow run).
    assert secret not in stack["procs"].log("worker")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_ui_shows_the_task_graph(stack: dict[str, Any]) -> None:
    """Headless Chromium renders the scheduled run's page: task graph, task names."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = stack["url"].removesuffix("/api") + f"/runs/flow-run/{stack['scheduled_run']}"
    shot = ARTIFACTS / "deploy-flow-run.png"
    if shot.exists():
        shot.unlink()

    def browse(*args: str) -> subprocess.CompletedProcess[str]:
        profile = stack["tmp"] / f"chrome-{uuid.uuid4().hex}"
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=20000", *args, page,
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=90)
        finally:
            try:  # chromium's helpers (zygote, gpu) too
                tree = [psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True)
                for q in tree:
                    q.kill()
            except psutil.NoSuchProcess:
                pass
            shutil.rmtree(profile, ignore_errors=True)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    dom = browse("--dump-dom").stdout
    text = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))))
    assert "Can't connect" not in text, text[:2000]
    assert "llmorch-run" in text and "kitti" in text, text[:2000]
    for name in ("s1 · detect", "s8 · detect", "s9 · average", "s11 · chatbot"):
        assert name in text, f"{name!r} not on the page: {text[:3000]}"
    browse(f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 30_000, "no screenshot (or a blank one)"


def test_llmorch_serve(stack: dict[str, Any]) -> None:
    """`llmorch serve` serves both flows from one process; a run triggered through the API completes."""

    env = {**stack["env"], "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    llmorch = str(BIN / "llmorch") if (BIN / "llmorch").exists() else "llmorch"
    stack["procs"].start("serve", [llmorch, "serve", "-P", "2"], env)
    with _client(stack["url"]) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                dep = client.read_deployment_by_name("llmorch-run/llmorch-run")
                client.read_deployment_by_name("llmorch-ask/llmorch-ask")
                break
            except Exception:
                assert time.monotonic() < deadline, stack["procs"].log("serve")[-3000:]
                time.sleep(1)
        plan = "s1: burn(0.2)\ns2: burn(0.2)\ns3: average([s1, s2])"
        run = client.create_flow_run_from_deployment(dep.id, parameters={"parameters": {"plan": plan, "processors": 2}})
        deadline = time.monotonic() + 90
        while not (state := client.read_flow_run(run.id).state).is_final():
            assert time.monotonic() < deadline, f"{state}\n{stack['procs'].log('serve')[-3000:]}"
            time.sleep(1)
        assert state.is_completed(), stack["procs"].log("serve")[-3000:]
        tasks = _task_runs(client, run.id, 3)
        assert sorted(t.name for t in tasks) == ["s1 · burn", "s2 · burn", "s3 · average"]
        result = _result(_artifacts(client, run.id)["llmorch-result"])
        assert 0.15 < result < 0.5


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_run_on_this_server(stack: dict[str, Any], tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """SIGINT or SIGTERM of `llmorch run` against `prefect server start` (issue 13 item 2): the
    checks of tests/test_signals.py, and the flow run ends Cancelled on the server."""
    from test_signals import LOG_ENV, stop_with_signal

    env = {**stack["env"], LOG_ENV: str(tmp_path / "calls.log"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), stack["env"].get("PYTHONPATH", "")])}
    with _client(stack["url"]) as client:
        before = {r.id for r in client.read_flow_runs()}
    stop_with_signal(tmp_path, env, sig, code)
    with _client(stack["url"]) as client:
        new = [r for r in client.read_flow_runs() if r.id not in before]
        assert [(r.name is not None, r.state.type.value if r.state else None) for r in new] == [(True, "CANCELLED")]
