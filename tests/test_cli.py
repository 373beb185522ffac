"""`llmorch` commands, run as a user would: a real subprocess, real exit codes, JSON out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from prefect_llmorch.examples import example_names

ROOT = Path(__file__).resolve().parent.parent
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"needs the project's shared data at {SHARED_DATA} (absent in a plain clone)"
)


def llmorch(
    *args: str, stdin: str | None = None, timeout: float = 240, cwd: Path = ROOT, python_flags: tuple[str, ...] = (),
    api_url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`llmorch ARGS` in a subprocess; on the embedded default unless `api_url` (a server's)."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env.pop("LLMORCH_DEBUG", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "prefect_llmorch.cli", *args], cwd=cwd, input=stdin,
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_version() -> None:
    from prefect_llmorch import __version__

    out = llmorch("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"llmorch (prefect-llmorch) {__version__}"


def test_check_accepts_the_examples() -> None:
    for plan in ("example:kitti", "example:seo", "example:parallelqa", "prefect_llmorch/examples/kitti.plan"):
        out = llmorch("check", plan, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ok"] is True


def test_check_reports_every_error_with_line_and_column_and_exits_1() -> None:
    bad = 's1: search("a")\ns2: serch("b")\ns3: chatbot("{s9}")\n'
    out = llmorch("check", "-", "--json", stdin=bad)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    where = [(e["line"], e["column"]) for e in doc["errors"]]
    assert where[0] == (2, 5) and len(where) == 2
    assert "did you mean `search`" in doc["errors"][0]["message"]
    human = llmorch("check", "-", stdin=bad)
    assert human.returncode == 1 and "line 2, column 5" in human.stderr and "Traceback" not in human.stderr


@needs_shared
def test_check_on_the_malformed_llmcompiler_plan_points_at_the_missing_paren() -> None:
    text = (SHARED_DATA / "llmcompiler_plans" / "parallelqa_1.txt").read_text()
    plan = text[text.index("1. search"):]
    out = llmorch("check", "-", "--json", "--toolbox", "tests.cli_toolbox:toolbox", stdin=plan)
    assert out.returncode == 1
    assert json.loads(out.stdout)["errors"][0]["line"] == 2


def test_graph_json_is_the_documented_object() -> None:
    out = llmorch("graph", "example:seo", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["calls"][2] == {"id": "s3", "function": "compare", "kind": "compute", "rank": 2, "deps": ["s1", "s2"]}
    assert doc["mutex"] == [] and set(doc) == {"calls", "mutex", "work", "critical_path", "prediction"}
    kitti = json.loads(llmorch("graph", "example:kitti", "--json").stdout)
    assert len(kitti["mutex"]) == 28 and kitti["mutex"][0] == ["s1", "s2"]
    mermaid = llmorch("graph", "example:kitti", "--mermaid").stdout
    assert mermaid.startswith("flowchart") and "-.-" in mermaid


@needs_shared
def test_simulate_json_on_an_stg_file() -> None:
    out = llmorch("simulate", str(SHARED_DATA / "stg" / "robot.stg"), "-P", "4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["work"] == 2483 and doc["critical_path"] == 569
    assert doc["lower_bound"] <= doc["makespan"] <= doc["work"] / 4 + (1 - 1 / 4) * doc["critical_path"]


def test_simulate_a_shipped_example_with_a_baseline() -> None:
    out = llmorch("simulate", "example:kitti", "-P", "2", "--policy", "sequential", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["makespan"] == pytest.approx(doc["work"])  # one call after another


# ---------------------------------------------------------------- bad input

TOOLBOX_MODULES = {
    "tb_quiet.py": "from prefect_llmorch.examples.toolbox import toolbox\n",
    "tb_raises.py": "raise ZeroDivisionError('the toolbox is broken')\n",
    "tb_loud.py": (
        "from prefect_llmorch.examples.toolbox import toolbox\n"
        "print('tb_loud: imported')\n"
    ),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An empty folder outside the checkout with bad inputs and small toolbox modules."""
    tmp = tmp_path_factory.mktemp("cli")
    for name, text in TOOLBOX_MODULES.items():
        (tmp / name).write_text(text)
    (tmp / "folder").mkdir()
    (tmp / "binary.plan").write_bytes(b"s1: search(\x00\x01\x02)\n")
    (tmp / "latin1.plan").write_bytes('s1: search("caf\xe9")\n'.encode("latin-1"))
    (tmp / "locked.plan").write_text('s1: search("x")\n')
    (tmp / "locked.plan").chmod(0)
    (tmp / "bad.plan").write_text('s1: serch("x")\n')
    return tmp


IMPORTTIME = re.compile(r"^import time:.*\|\s*([\w.]+)$")


def bad_input(workdir: Path, *args: str) -> tuple[str, set[str]]:
    """Run the CLI on bad input with `-X importtime`; return its one stderr line and the
    top-level modules it imported, after checking exit code 2 and that it is one line."""
    out = llmorch(*args, cwd=workdir, python_flags=("-X", "importtime"))
    modules, lines = set(), []
    for line in out.stderr.splitlines():
        m = IMPORTTIME.match(line)
        if m:
            modules.add(m.group(1).split(".")[0])
        elif not line.startswith("import time:"):
            lines.append(line)
    assert out.returncode == 2, (out.returncode, lines)
    assert out.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0], modules


BAD_INPUTS = {
    "missing plan": (("check", "missing.plan"), "no such plan file: missing.plan"),
    "missing example": (("run", "example:nope"), "no example plan 'example:nope'; shipped: example:"),
    "folder": (("run", "folder"), "folder is a folder, not a plan file"),
    "binary file": (("check", "binary.plan"), "binary.plan is a binary file"),
    "not UTF-8": (("graph", "latin1.plan"), "latin1.plan is not UTF-8 text (byte 0xe9 at offset 15)"),
    "unknown toolbox module": (("check", "example:kitti", "-t", "nowhere:tb"), "cannot import toolbox module 'nowhere'"),
    "unknown toolbox attribute": (("run", "example:kitti", "-t", "tb_quiet:tb"), "toolbox module 'tb_quiet' has no attribute 'tb'; it has: toolbox"),
    "toolbox raising on import": (("run", "example:kitti", "-t", "tb_raises:toolbox"), "raised ZeroDivisionError while importing: the toolbox is broken"),
    "toolbox that is a callable": (("run", "example:kitti", "-t", "os:abort"), "os:abort is a builtin_function_or_method, not a Toolbox"),
    "toolbox without attr": (("check", "example:kitti", "-t", "tb_quiet"), "toolbox must be given as module:attr"),
    "P 0": (("run", "example:kitti", "-P", "0"), "-P 0: the number of processors must be at least 1"),
    "P -1": (("run", "example:kitti", "-P", "-1"), "-P -1: the number of processors must be at least 1"),
    "P 0 for ask": (("ask", "question?", "-P", "0"), "-P 0: the number of processors must be at least 1"),
    "unknown policy": (("run", "example:kitti", "--policy", "nonsense"), "unknown policy 'nonsense'; give --policy with one of: critical-path, paper"),
    "unknown ask policy": (("ask", "question?", "--policy", "nonsense"), "unknown policy 'nonsense'; give --policy with one of: critical-path, paper"),
    "recover out of range": (("run", "example:kitti", "--recover", "11"), "--recover 11: must be at most 10"),
    "attempts 0": (("ask", "question?", "--attempts", "0"), "--attempts 0: must be at least 1"),
    "unknown planner": (("ask", "question?", "--planner", "yaml"), "unknown planner 'yaml'; give --planner with one of: text, json"),
    "unknown costs": (("run", "example:kitti", "--costs", "guess"), "unknown --costs 'guess'; give --costs declared or --costs history"),
    "unknown simulated policy": (("simulate", "example:kitti", "--policy", "nonsense"), "one of: critical-path, paper, sequential, eager, rank-barrier"),
    "missing STG file": (("simulate", "missing.stg"), "no such STG file: missing.stg; give the path of a Standard Task Graph"),
    "serve plan file missing": (("serve", "--plan-file", "missing.plan"), "no such plan file: missing.plan"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_without_importing_prefect(workdir: Path, case: str) -> None:
    args, expected = BAD_INPUTS[case]
    line, modules = bad_input(workdir, *args)
    assert expected in line
    assert not modules & {"prefect", "openai", "uvicorn"}, "bad input must be refused before Prefect is imported"


def test_an_unreadable_plan_file_is_one_line_exit_2(workdir: Path) -> None:
    if os.access(workdir / "locked.plan", os.R_OK):
        pytest.skip("this user can read a file without read permission (root)")
    line, modules = bad_input(workdir, "check", "locked.plan")
    assert "cannot read plan file locked.plan: permission denied" in line and "prefect" not in modules


def test_the_missing_plan_message_lists_every_shipped_example(workdir: Path) -> None:
    line, _ = bad_input(workdir, "run", "missing.plan")
    assert all(name in line for name in example_names()) and "example:kitti" in line


def test_debug_shows_the_traceback_of_bad_input(workdir: Path) -> None:
    for args in (("--debug", "check"), ("check", "--debug")):
        out = llmorch(*args, "example:kitti", "-t", "tb_raises:toolbox", cwd=workdir)
        assert out.returncode == 2
        assert "Traceback" in out.stderr and "ZeroDivisionError: the toolbox is broken" in out.stderr
        assert out.stderr.rstrip().splitlines()[-1].startswith("error: toolbox module 'tb_raises' raised")


def test_more_processors_than_cores_are_capped_with_a_note_unless_forced(workdir: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    capped = llmorch("run", "bad.plan", "-P", str(cores + 7), cwd=workdir)
    assert capped.returncode == 1  # the plan's error; no Prefect run for a bad plan
    assert f"note: -P {cores + 7} is more than this machine's {cores} cores: using -P {cores}" in capped.stderr
    forced = llmorch("run", "bad.plan", "-P", str(cores + 7), "--force-processors", cwd=workdir)
    assert forced.returncode == 1 and "note:" not in forced.stderr


def test_check_json_stays_parsable_when_the_toolbox_prints(workdir: Path) -> None:
    out = llmorch("check", "example:kitti", "-t", "tb_loud:toolbox", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": True, "errors": [], "calls": 11}
    assert "tb_loud: imported" in out.stderr


def test_cli_module_does_not_import_prefect() -> None:
    code = "import sys, prefect_llmorch.cli; print(sorted(m for m in ('prefect', 'openai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


# ---------------------------------------------------------------- runs (slow: ephemeral Prefect)

NOISY_TOOLBOX = '''
import sys
from prefect_llmorch import Toolbox, compute, inout

print("noisy: imported")

@inout
def shout(word: str) -> str:
    print("noisy: shout", word)
    return word.upper()

@compute
def crunch(word: str) -> int:
    print("noisy: crunch", word)
    sys.stdout.flush()  # a worker process: its buffer would be lost when it is stopped
    return len(word)

toolbox = Toolbox(shout, crunch)
'''


@pytest.mark.slow
def test_run_json_stays_parsable_when_tools_print_and_p_is_capped(tmp_path: Path, prefect_server) -> None:  # noqa: ANN001
    (tmp_path / "noisy.py").write_text(NOISY_TOOLBOX)
    (tmp_path / "noisy.plan").write_text('s1: shout("hello")\ns2: crunch(s1)\n')
    cores = len(os.sched_getaffinity(0))
    out = llmorch("run", "noisy.plan", "-t", "noisy:toolbox", "-P", str(cores + 1), "--json", cwd=tmp_path, api_url=prefect_server.url)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["result"] == 5 and doc["processors"] == cores
    assert "noisy: shout hello" in out.stderr and "noisy: crunch HELLO" in out.stderr


@pytest.mark.slow
def test_run_json_executes_on_ephemeral_prefect() -> None:
    out = llmorch("run", "example:seo", "-P", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["processors"] == 2
    assert [c["id"] for c in doc["calls"]] == ["s1", "s2", "s3", "s4"]
    assert all(set(c) == {"id", "function", "kind", "rank", "state", "start", "end", "pid"} for c in doc["calls"])
    assert doc["result"].startswith("Summary")
    assert doc["lower_bound"] <= doc["makespan"] + 1e-6


@pytest.mark.slow
def test_run_with_a_failing_call_exits_1_with_a_failed_state(prefect_server) -> None:  # noqa: ANN001
    plan = 's1: search("Apple stock")\ns2: average([])\ns3: chatbot("Mean: {s2}")\n'
    out = llmorch("run", "-", "-P", "1", "--json", stdin=plan, api_url=prefect_server.url)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["state"] == "Failed" and "average() of an empty list" in doc["message"]
    states = {c["id"]: c["state"] for c in doc["calls"]}
    assert states["s1"] == "Completed" and states["s2"] == "Failed" and states["s3"] != "Completed"


@pytest.mark.slow
def test_demo_runs_the_whole_loop_without_an_api_key(prefect_server) -> None:  # noqa: ANN001
    # Against the session's server; the demo on the embedded default, as the README gives it,
    # is tests/test_wheel.py's (from the installed wheel; .ci/run runs it before the tests).
    out = llmorch("demo", "--json", api_url=prefect_server.url)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["attempts"] == 1
    assert doc["tokens"]["prompt"] > 0 and doc["result"].startswith("Demo answer")
