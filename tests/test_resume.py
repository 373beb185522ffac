"""Resume: after `kill -9` of `llmorch run` mid-plan, the same command again runs only the calls
that had not completed; completed pure calls come from Prefect's cache. The Prefect UI's
"Retry" of a Failed llmorch flow run does the same (the UI sets the run's state to
Scheduled/AwaitingRetry through the API; the serving process runs it again). Counted with
the tools' own records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path, prefect_server) -> None:  # noqa: ANN001
    log, flag = tmp_path / "runs.log", tmp_path / "hold"
    plan = tmp_path / "resume.plan"
    plan.write_text(
        f's1: square(7, "{log}")\n'
        f's2: lookup("fast", "{log}")\n'
        f's3: wait_while("{flag}", "slow", "{log}")\n'
        f's4: square(s1, "{log}")\n'
    )
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_server.url,  # the session's server; results are stored under PREFECT_HOME
        PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    cmd = [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_cache:toolbox", "-P", "1", "--json"]

    def ran() -> list[str]:
        return [line.split()[0] + ":" + line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []

    flag.write_text("")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        # s1, s2, s4 complete while s3 waits on the flag; give their results time to be stored.
        while not {"square:7", "lookup:fast", "wait_while:slow", "square:49"} <= set(ran()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, f"calls did not start: {ran()}"
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    before = ran()
    flag.unlink()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    again = ran()[len(before):]
    assert again == ["wait_while:slow"], f"the resumed run re-ran {again}"
    import json

    report = json.loads(second.stdout)
    cached = {c["id"] for c in report["calls"] if c.get("cached")}
    assert cached == {"s1", "s2", "s4"}


SERVE_ENV = "LLMORCH_TEST_SERVE_RETRY"


@pytest.mark.skipif(
    not os.environ.get(SERVE_ENV),
    reason=f"set {SERVE_ENV}=1: ~33 s on 2 busy cores (serve registers in ~10 s, each served run is a new "
    "Python process of ~12 s); CI runs the in-process version below",
)
@pytest.mark.usefixtures("prefect_harness")
def test_ui_retry_of_a_failed_served_run_reruns_only_what_had_not_completed(tmp_path: Path) -> None:
    """The Prefect UI's "Retry" on a Failed flow run sets its state to Scheduled, named
    AwaitingRetry, through the API (`POST /flow_runs/{id}/set_state`, as the UI's own client
    does, with force=False), and the process serving the deployment runs it again. Here
    `llmorch serve` serves `llmorch-run` against the session's test server; the retry runs
    only the call that had failed; the completed one comes from Prefect's cache."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import State, StateType

    log, flag = tmp_path / "runs.log", tmp_path / "fail"
    flag.write_text("")
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
        PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    serve = subprocess.Popen(
        [sys.executable, "-m", "prefect_llmorch.cli", "serve", "-P", "1"], cwd=tmp_path, env=env,
        stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def ran() -> list[str]:
        return [" ".join(line.split()[:2]) for line in log.read_text().splitlines()] if log.exists() else []

    def wait_final(client, run_id, after: int = 0):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + 120
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final() and run.run_count > after:
                return run
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)

    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    dep = client.read_deployment_by_name("llmorch-run/llmorch-run")
                    timings["served"] = round(time.monotonic() - t0, 1)
                    break
                except Exception:
                    assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(0.5)
            plan = f's1: lookup("retry", "{log}")\ns2: flaky(3, "{flag}", "{log}")\n'
            params = {"plan": plan, "toolbox": "toolboxes_cache:toolbox", "processors": 1}
            run = client.create_flow_run_from_deployment(dep.id, parameters={"parameters": params})
            first = wait_final(client, run.id)
            timings["first run"] = round(time.monotonic() - t0, 1)
            assert first.state.is_failed(), first.state
            assert sorted(ran()) == ["flaky 3", "lookup retry"]  # both ran, s2 failed

            flag.unlink()
            retry = State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI")
            accepted = client.set_flow_run_state(run.id, retry, force=False)
            assert accepted.status.value == "ACCEPT", accepted
            second = wait_final(client, run.id, after=first.run_count)
            timings["retried"] = round(time.monotonic() - t0, 1)
            assert second.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
            assert ran()[2:] == ["flaky 3"]  # only the failed call ran again
            print(f"timings: {timings}")
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)


def _execute_as_a_worker(flow_run_id):  # noqa: ANN001, ANN202
    """What the process a worker or `serve` starts for a scheduled flow run does
    (`python -m prefect.engine`): load the flow run and its flow, run it; in this process."""
    from prefect.flow_engine import load_flow, load_flow_run, run_flow

    flow_run = load_flow_run(flow_run_id=flow_run_id)
    return run_flow(load_flow(flow_run), flow_run=flow_run, return_type="state")


@pytest.mark.usefixtures("prefect_harness")
def test_ui_retry_reruns_only_what_had_not_completed_executed_in_process(tmp_path: Path) -> None:
    """The UI's Retry (state Scheduled/AwaitingRetry through the API, force=False, as the
    UI's client sends it) of a Crashed, then a Failed `llmorch-run` deployment run, each time executed
    again as a worker does, in this process (a served run's own process costs ~12 s here;
    the served version is `test_ui_retry_of_a_failed_served_run...`)."""
    from prefect import get_client
    from prefect.states import State, StateType

    from prefect_llmorch.flows.deploy import llmorch_run

    log, flag = tmp_path / "runs.log", tmp_path / "fail"
    flag.write_text("")

    def ran() -> list[str]:
        return [" ".join(line.split()[:2]) for line in log.read_text().splitlines()] if log.exists() else []

    deployment_id = llmorch_run.to_deployment(name=f"retry-{tmp_path.name}").apply()
    plan = f's1: lookup("retry", "{log}")\ns2: flaky(4, "{flag}", "{log}")\n'
    params = {"plan": plan, "toolbox": "toolboxes_cache:toolbox", "processors": 1}
    retry = State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI")
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"parameters": params})
        assert _execute_as_a_worker(run.id).is_failed()
        assert sorted(ran()) == ["flaky 4", "lookup retry"]
        # Crashed, as a worker reports a flow process that died; the UI offers Retry there too.
        client.set_flow_run_state(run.id, State(type=StateType.CRASHED, message="process died"), force=True)
        assert client.set_flow_run_state(run.id, retry, force=False).status.value == "ACCEPT"
        assert _execute_as_a_worker(run.id).is_failed()  # the flag is still there
        assert ran()[2:] == ["flaky 4"]
        flag.unlink()
        assert client.set_flow_run_state(run.id, retry, force=False).status.value == "ACCEPT"
        state = _execute_as_a_worker(run.id)
        assert state.is_completed(), state
        assert ran()[3:] == ["flaky 4"]  # only the failed call ran again; s1 came from the cache
        assert client.read_flow_run(run.id).run_count == 3
