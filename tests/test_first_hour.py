"""A new user's first hour, run as subprocesses: the wheel outside the checkout, `up` with its services,
one state directory wherever a command runs, and one-line errors."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import CLUSTER_YAML, REPO, cli_command, cli_env, nvml_sees_a_gpu, wait_for
from wheel import WheelInstall, build_and_install

LOCAL = ["--scheduler-address", "127.0.0.1:0", "--dashboard-address", "127.0.0.1:0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class Running:
    """A long-running ``altlas-dask`` process in its own process group; stdout lines arrive on a queue."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, stderr: Path) -> None:
        self.stderr_path = stderr
        with stderr.open("w") as err:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd, start_new_session=True
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_lines(self, *prefixes: str, timeout: float = 180) -> dict[str, str]:
        """Read stdout until a line starting with each prefix was seen; {prefix: rest of its line}."""
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        for line in self.seen:
            for prefix in prefixes:
                if line.startswith(prefix):
                    found[prefix] = line[len(prefix) :].strip()
        while set(found) != set(prefixes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {set(prefixes) - set(found)} within {timeout} s:\n{''.join(self.seen)}{self.stderr()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"exited ({self.proc.wait()}) early:\n{''.join(self.seen)}\n{self.stderr()}")
            self.seen.append(line)
            for prefix in prefixes:
                if line.startswith(prefix):
                    found[prefix] = line[len(prefix) :].strip()
        return found

    def ctrl_c(self, timeout: float = 60) -> int:
        """SIGINT to the whole process group, as a terminal's Ctrl-C; the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not stop within {timeout} s of Ctrl-C")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    return build_and_install(tmp_path_factory.mktemp("wheel"))


# -- the wheel ------------------------------------------------------------------------------------------


def test_wheel_ships_the_console_and_the_default_config(installed: WheelInstall) -> None:
    files = installed.files()
    shipped = {"altlas_dask/console/app.py", "altlas_dask/console/views/tasks.py", "altlas_dask/cluster.yaml"}
    assert shipped | {"altlas_dask/ops/selftest-small.yaml"} <= files  # `selftest --small` works from the wheel
    assert (installed.target / "altlas_dask" / "cluster.yaml").read_text() == CLUSTER_YAML.read_text()
    probe = "import altlas_dask, altlas_dask.config as c; print(altlas_dask.__file__); print(c.DEFAULT_CONFIG_PATH)"
    done = subprocess.run(
        [*installed.command()[:1], "-c", probe],
        capture_output=True,
        text=True,
        env=installed.env(),
        cwd=installed.scratch,
        check=True,
    )
    module, config = done.stdout.split()
    assert Path(module).is_relative_to(installed.target) and Path(config).is_relative_to(installed.target)
    assert not Path(module).is_relative_to(REPO)


@pytest.mark.skipif(nvml_sees_a_gpu(), reason="NVML sees a real GPU on this machine")
def test_wheel_gpus_without_a_gpu_names_the_config_file_it_used(installed: WheelInstall) -> None:
    done = subprocess.run(
        installed.command("gpus", "--json"),
        capture_output=True,
        text=True,
        env=installed.env(),
        cwd=installed.scratch,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"simulated GPU pool of {installed.target / 'altlas_dask' / 'cluster.yaml'}" in done.stderr
    names = [g["name"] for g in json.loads(done.stdout)["gpus"]]
    assert names == ["Simulated A100 80GB"] * 2 + ["Simulated T4 16GB"] * 2  # the shipped pool, not defaults


def test_wheel_console_starts_and_answers_health(installed: WheelInstall, tmp_path: Path) -> None:
    port = free_port()
    command = installed.command("console", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--port", str(port))
    console = Running(command, installed.env(), installed.scratch, tmp_path / "stderr.txt")
    try:
        wait_for(
            lambda: console.proc.poll() is not None or status(f"http://127.0.0.1:{port}/_stcore/health") == 200,
            timeout=120,
            what="the console's health endpoint",
        )
        assert console.proc.poll() is None, console.stderr()
        assert "missing" not in console.stderr()
    finally:
        console.kill()


def test_wheel_up_serves_every_url_and_a_key_from_another_folder_works(installed: WheelInstall, tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = installed.env(ALTLAS_HOME=str(home))
    created = subprocess.run(
        installed.command("keys", "create", "--user", "admin", "--admin"),
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    assert f"state directory: {home}" in created.stderr
    key = created.stdout.strip()
    console_port, api_port = free_port(), free_port()
    command = installed.command(
        "up",
        "--simulate",
        "2",
        *LOCAL,
        "--with-console",
        "--console-port",
        str(console_port),
        "--with-api",
        "--api-port",
        str(api_port),
    )
    up = Running(command, env, installed.scratch, tmp_path / "stderr.txt")
    try:
        urls = up.wait_for_lines("Dashboard:", "GPU page:", "State:", "Console:", "REST API:")
        assert urls["State:"] == str(home)
        assert status(urls["Dashboard:"]) == 200
        assert status(urls["GPU page:"]) == 200
        assert status(f"{urls['Console:']}/_stcore/health") == 200
        api = urls["REST API:"].split()[0]
        assert status(api) == 200  # the printed address answers: the API's index
        assert status(f"{api}/gpus") == 401
        assert status(f"{api}/gpus", {"Authorization": f"Bearer {key}"}) == 200  # key made in another folder
        assert (home / "altlas.sqlite").exists() and not list(installed.scratch.glob("**/*.sqlite"))
        docs_offline(api.removesuffix("/api/v1"))
        console_in_a_browser(urls["Console:"], gpus=2, key=key)
        assert up.ctrl_c() == 0, up.stderr()
        assert "Traceback" not in up.stderr(), up.stderr()
    finally:
        up.kill()


def docs_offline(base: str) -> None:
    """/docs names only this server's own assets (no CDN), and each of them answers."""
    with urllib.request.urlopen(f"{base}/docs", timeout=10) as response:
        page = response.read().decode()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: *["']([^"']+)["']""", page)
    urls = [a or b for a, b in urls]
    assert len(urls) >= 4 and "swagger-ui-bundle.js" in page, page
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls  # nothing from another host
    assert "cdn" not in page.lower()
    for url in urls:
        assert status(f"{base}{url}") == 200, url


def console_in_a_browser(url: str, gpus: int, key: str) -> None:
    """The console served from the wheel, in headless Chromium, signed in with ``key``: a card per GPU, no error."""
    from console_helpers import CHROMIUM, CHROMIUM_ARGS, gpu_cards, no_errors, sign_in

    if CHROMIUM is None:
        return  # test_console covers the browser where Chromium is installed (make system-deps)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            sign_in(page, key, "admin")
            page.get_by_role("heading", name="GPUs", exact=True).wait_for()
            wait_for(lambda: gpu_cards(page).count() == gpus, timeout=60, what="a card per GPU")
            no_errors(page)
        finally:
            browser.close()


# -- up -------------------------------------------------------------------------------------------------


def test_up_keeps_the_cluster_when_the_api_cannot_start(tmp_path: Path) -> None:
    command = [
        *cli_command(),
        "--config",
        str(CLUSTER_YAML),
        "--set",
        "accounting.database=:memory:",
        "up",
        "--simulate",
        "1",
        *LOCAL,
        "--with-api",
        "--api-port",
        str(free_port()),
    ]
    up = Running(command, cli_env(), tmp_path, tmp_path / "stderr.txt")
    try:
        dashboard = up.wait_for_lines("Dashboard:")["Dashboard:"]
        wait_for(lambda: "did not start" in up.stderr(), timeout=120, what="the API's failure line")
        failed = [line for line in up.stderr().splitlines() if "did not start" in line]
        assert len(failed) == 1 and failed[0].startswith("error: the REST API did not start: "), up.stderr()
        assert "database file" in failed[0] and "the cluster stays up" in failed[0]
        assert not any(line.startswith("REST API:") for line in up.seen)  # never announced
        assert status(dashboard) == 200 and up.proc.poll() is None
        assert up.ctrl_c() == 0
    finally:
        up.kill()


def test_up_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [*cli_command(), "up", "--simulate", "1", "--scheduler-address", address],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the scheduler address {address} is in use"), done.stderr
    assert "--scheduler-address" in lines[0]


# -- the README's quick start ---------------------------------------------------------------------------------

README_SCHEDULER = "tcp://127.0.0.1:8786"  # the address the README's quick start connects to (`up`'s default)


def readme_code(heading: str, language: str = "python") -> str:
    """The first ``language`` code block under the README's ``## heading``."""
    section = (REPO / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start_runs_as_written_against_a_running_up(tmp_path: Path) -> None:
    """The README's Python block, saved as a script and run against `altlas-dask up` (its address swapped for
    the free port this test's `up` took): no traceback, the GPU it ran on, the batch, a line per GPU."""
    code = readme_code("Connect from Python or a notebook")
    assert code.count(README_SCHEDULER) == 1, code
    home = tmp_path / "home"
    env = {**cli_env(), "ALTLAS_HOME": str(home)}
    up = Running([*cli_command(), "up", "--simulate", "2", *LOCAL], env, tmp_path, tmp_path / "up-stderr.txt")
    try:
        scheduler = up.wait_for_lines("Scheduler:")["Scheduler:"]
        script = tmp_path / "quickstart.py"
        script.write_text(code.replace(README_SCHEDULER, scheduler))
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        gpu, reason, batch, *gpus = done.stdout.splitlines()
        assert gpu in ("0", "1") and reason and batch == "1000", done.stdout
        assert [line.split()[0] for line in gpus] == ["0", "1"] and all(" active " in line for line in gpus), gpus
        assert up.ctrl_c() == 0, up.stderr()
    finally:
        up.kill()


# -- one state directory ----------------------------------------------------------------------------------


def test_state_directory_is_absolute_and_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from altlas_dask.config import build_config, load_config, state_home

    monkeypatch.setenv("ALTLAS_HOME", str(tmp_path / "env-home"))
    assert load_config(CLUSTER_YAML).accounting.database == str(tmp_path / "env-home" / "altlas.sqlite")
    file = tmp_path / "cluster.yaml"
    file.write_text(f"home: {tmp_path / 'file-home'}\naccounting: {{database: db/a.sqlite}}\n")
    assert load_config(file, environ={}).accounting.database == str(tmp_path / "file-home" / "db" / "a.sqlite")
    assert load_config(file).home == str(tmp_path / "env-home")  # $ALTLAS_HOME over the file, like ALTLAS_*__*
    assert load_config(file, overrides=[f"home={tmp_path}/cli"]).home == f"{tmp_path}/cli"  # --set over both
    absolute = build_config({"accounting": {"database": str(tmp_path / "x.sqlite")}})
    assert absolute.accounting.database == str(tmp_path / "x.sqlite")
    assert build_config({"accounting": {"database": ":memory:"}}).accounting.database == ":memory:"
    monkeypatch.delenv("ALTLAS_HOME")
    default = state_home()
    assert default.is_absolute() and default.name == "altlas-dask"
    assert default.is_relative_to(os.environ["XDG_DATA_HOME"])  # conftest: never the real user data dir


def test_keys_from_two_folders_share_one_database(tmp_path: Path) -> None:
    env = {**cli_env(), "ALTLAS_HOME": str(tmp_path / "home")}
    ids = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        done = subprocess.run(
            [*cli_command(), "keys", "create", "--user", f"user-{folder}"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path / folder,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        ids.append(re.search(r"key (\S+) for user", done.stderr).group(1))
    listed = subprocess.run(
        [*cli_command(), "keys", "list", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert {row["key_id"] for row in json.loads(listed.stdout)} == set(ids)
    assert f"state directory: {tmp_path / 'home'}" in listed.stderr
    assert not list((tmp_path / "a").iterdir()) and not list((tmp_path / "b").iterdir())


# -- one-line errors ----------------------------------------------------------------------------------------

NOWHERE = "tcp://127.0.0.1:9"


@pytest.mark.parametrize(
    "args",
    [
        ["gpus", "--scheduler", NOWHERE],
        ["gpus", "--scheduler", NOWHERE, "--json"],
        ["submit", "--workload", "modelled", "--scheduler", NOWHERE, "--json"],
    ],
)
def test_unreachable_scheduler_is_one_line_exit_2(args: list[str]) -> None:
    env = {**cli_env(), "ALTLAS_CONNECT_TIMEOUT": "0.5"}  # the wait before "cannot reach" (5 s by default)
    done = subprocess.run([*cli_command(), *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the scheduler at"), done.stderr
    assert "after 0.5 s" in lines[0], "$ALTLAS_CONNECT_TIMEOUT is the wait"
    assert "altlas-dask up" in lines[0] and "Traceback" not in done.stderr
    if "--json" in args:
        assert json.loads(done.stdout)["error"] == lines[0].removeprefix("error: ")
    else:
        assert done.stdout == ""


def test_version_and_listed_choices() -> None:
    from altlas_dask.client.workloads import WORKLOADS, Workload, register

    version = subprocess.run([*cli_command(), "--version"], capture_output=True, text=True, env=cli_env())
    assert version.returncode == 0 and re.fullmatch(r"altlas-dask, version \d+\.\d+\.\d+\S*\n", version.stdout)
    from click.testing import CliRunner

    from altlas_dask.cli.main import cli
    from altlas_dask.cli.submit import strategy_names

    custom = register(Workload("custom-echo", print, "a custom workload", "inference"))
    try:
        custom_strategy = ["--set", "gpu.multi_gpu.custom_strategies.mine=os.path:join", "submit", "--help"]
        text = " ".join(CliRunner().invoke(cli, custom_strategy, terminal_width=400).output.split())
    finally:
        WORKLOADS.pop(custom.name)
    assert f"One of: {', '.join([*WORKLOADS, 'custom-echo'])}." in text
    assert f"One of: {', '.join([*strategy_names(), 'mine'])}." in text and "least_loaded" in text


def test_submit_json_when_the_scheduler_goes_away_is_one_json_error(tmp_path: Path) -> None:
    command = [*cli_command(), "--config", str(CLUSTER_YAML), "up", "--simulate", "1", *LOCAL]
    up = Running(command, cli_env(), tmp_path, tmp_path / "up-stderr.txt")
    try:
        scheduler = up.wait_for_lines("Scheduler:")["Scheduler:"]
        long_run = ["--workload", "modelled", "--count", "2", "--param", "work_gflop=1000000"]
        submit = subprocess.Popen(
            [*cli_command(), "submit", *long_run, "--user", "lost", "--scheduler", scheduler, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        from altlas_dask.client.gpu_client import Client

        with Client(scheduler, gpu_defaults={"user": "lost"}, timeout=30, set_as_default=False) as watcher:
            wait_for(lambda: len(watcher.tasks(status="running")) == 2, timeout=120, what="the run's tasks running")
        up.kill()  # the cluster dies mid-run
        out, err = submit.communicate(timeout=120)
    finally:
        up.kill()
    assert submit.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: lost the connection to the scheduler at {scheduler}")
    assert json.loads(out)["error"] == lines[0].removeprefix("error: ")
