"""Fixtures of the real-browser tests: a grantmesh mesh of separate
processes (registry, two agencies, two colleges, the web portal) on a fresh
PostgreSQL database, and headless Chromium browsers driven by Debian's
chromedriver through Selenium.

Environment (scripts/test-browser sets them):
  GRANTMESH_BIN                  the grantmesh binary
  GRANTMESH_TEST_DATABASE_URL    a PostgreSQL server URL (a database is made per run)
  GRANTMESH_SCREENSHOTS          where screenshots go (default .tmp/screenshots, which
                                 git ignores; scripts/screenshots sets docs/screenshots)
"""

import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = pathlib.Path(__file__).resolve().parents[3]
# Bounds on waits: far above what a healthy mesh needs on a busy 2-core machine.
START_TIMEOUT = 30.0
# A simulated day, so an account of a few days expires while a test watches
# (365 days last six minutes, longer than the whole run).
DAY_LENGTH = "1s"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, sql):
    """Runs one statement with Debian's psql (installed with the server)."""
    candidates = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/psql"))
    binary = shutil.which("psql") or (str(candidates[-1]) if candidates else "psql")
    subprocess.run([binary, url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


class Mesh:
    """The mesh's processes; each can be killed alone (the dashboard test does)."""

    def __init__(self, binary, database_url, workdir):
        self.binary = binary
        self.database_url = database_url
        self.workdir = workdir
        self.procs = {}
        self.registry_port = free_port()
        self.registry = f"http://127.0.0.1:{self.registry_port}"
        # Every role serves Prometheus metrics; agencies and colleges on a
        # free port they advertise in their `metrics` label, the registry
        # (which registers nowhere) on one chosen here.
        self.registry_metrics = f"http://127.0.0.1:{free_port()}/metrics"
        self.web_port = free_port()
        self.web = f"http://127.0.0.1:{self.web_port}"
        self.env = dict(
            os.environ,
            GRANTMESH_INSECURE="true",
            GRANTMESH_LOG="warn",
            DATABASE_URL=database_url,
        )
        self.env.pop("GRANTMESH_REGISTRY", None)
        # The token key pair: colleges sign with token.key, agencies verify
        # with token.pub (and must not be given the private half).
        keys = self.workdir / "keys"
        subprocess.run([self.binary, "ca", "token-key", "--dir", str(keys)], check=True,
                       stdout=subprocess.DEVNULL)
        # The colleges' mail: kept in an outbox the tests (and the portal's
        # /dev/mail) read the sign-up codes from.
        self.outbox = self.workdir / "mail"
        os.environ["GRANTMESH_MAIL_OUTBOX"] = str(self.outbox)
        self.role_env = {
            "college": {
                "GRANTMESH_TOKEN_KEY_FILE": str(keys / "token.key"),
                "GRANTMESH_MAIL_OUTBOX": str(self.outbox),
            },
            "agency": {"GRANTMESH_TOKEN_PUBLIC_KEY_FILE": str(keys / "token.pub")},
        }

    def spawn(self, name, *args):
        log = open(self.workdir / f"{name}.log", "w")
        env = dict(self.env, **self.role_env.get(args[0], {}))
        self.procs[name] = subprocess.Popen(
            [self.binary, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def start(self):
        metrics_port = urllib.parse.urlsplit(self.registry_metrics).port
        self.spawn("registry", "registry", "--listen", f"127.0.0.1:{self.registry_port}",
                   "--warmup", "0s", "--metrics-listen", f"127.0.0.1:{metrics_port}")
        for n in (1, 2):
            self.spawn_college(f"college-{n}")
        for name, lo, hi in (("nsf", 300000, 500000), ("erc", 100000, 250000)):
            self.spawn(f"agency-{name}", "agency", "--listen", f"127.0.0.1:{free_port()}",
                       "--instance-id", f"agency-{name}", "--registry", self.registry,
                       "--name", name, "--min-award", str(lo), "--max-award", str(hi),
                       "--metrics-listen", "127.0.0.1:0")
        self.spawn("web", "web", "--listen", f"127.0.0.1:{self.web_port}",
                   "--registry", self.registry, "--dev-mail-outbox", str(self.outbox))
        self.await_mesh(colleges=2, agencies=2)

    def spawn_web(self, name):
        """Starts another web role on a free port (returned) once it answers."""
        port = free_port()
        self.spawn(name, "web", "--listen", f"127.0.0.1:{port}", "--registry", self.registry)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return port
            except OSError:
                if self.procs[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n" + self.log(name))
                time.sleep(0.1)

    def spawn_college(self, name):
        self.spawn(name, "college", "--listen", f"127.0.0.1:{free_port()}",
                   "--instance-id", name, "--registry", self.registry,
                   "--agencies", "nsf=300000..500000,erc=100000..250000",
                   "--day-length", DAY_LENGTH, "--metrics-listen", "127.0.0.1:0")

    def await_mesh(self, colleges, agencies):
        """Waits until the portal's dashboard lists the mesh (bounded)."""
        import json
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n" + self.log(name))
            try:
                with urllib.request.urlopen(self.web + "/mesh.json", timeout=2) as r:
                    view = json.load(r)
                counts = {s["name"]: len(s["instances"]) for s in view["services"]}
                last = counts
                if counts.get("college") == colleges and counts.get("agency") == agencies:
                    return
            except OSError as err:
                last = err
            time.sleep(0.2)
        raise RuntimeError(f"the mesh did not come up within {START_TIMEOUT}s (last: {last})")

    def log(self, name):
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]

    def kill(self, name):
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def terminate(self, name):
        """Stops one process along its graceful path (it deregisters)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def mesh():
    binary = os.environ.get("GRANTMESH_BIN") or str(REPO / "target/debug/grantmesh")
    base = os.environ.get("GRANTMESH_TEST_DATABASE_URL")
    if not base:
        pytest.fail("GRANTMESH_TEST_DATABASE_URL is not set (scripts/test-browser sets it)")
    name = f"browser_{os.getpid()}_{secrets.token_hex(3)}"
    psql(base, f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(base)
    url = urllib.parse.urlunsplit(parts._replace(path="/" + name))
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="grantmesh-browser-"))
    m = Mesh(binary, url, workdir)
    try:
        m.start()
        yield m
    finally:
        m.stop()
        psql(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)


def new_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,960", "--disable-extensions", "--no-first-run",
                "--disable-background-networking", "--lang=en-GB"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browsers():
    """Makes browsers on demand (each its own profile, so its own cookies); quits them all."""
    made = []

    def make():
        driver = new_browser()
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.quit()


# Where a test run's screenshots go unless asked otherwise: ignored by git
# (`/.tmp/` in .gitignore), so a test run leaves the work tree clean. The
# tracked pictures in docs/screenshots/ change only through scripts/screenshots.
DEFAULT_SCREENSHOTS = REPO / ".tmp/screenshots"


def screenshot_dir():
    asked = os.environ.get("GRANTMESH_SCREENSHOTS")
    return pathlib.Path(asked).resolve() if asked else DEFAULT_SCREENSHOTS


@pytest.fixture(scope="session")
def shots():
    out = screenshot_dir()
    out.mkdir(parents=True, exist_ok=True)

    def save(driver, name):
        driver.save_screenshot(str(out / f"{name}.png"))

    return save
