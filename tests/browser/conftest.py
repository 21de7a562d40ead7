"""Real-browser fixtures: Debian's Chromium driven by Playwright against real TLS peers.

* ``grid``: two real peer processes over TLS (mutual TLS between them): ``grid.a`` is the
  broker, ``grid.b`` joined it.  Both publishing areas hold the sample analysis:
  ``histogram.py`` and ``histogram.sub`` at the top, inputs ``samples/run000.txt`` ...
  (``grid.inputs``), and a text file ``notes/readme.txt``.
* ``alice`` / ``bob``: Python clients logged in to ``grid.a`` by certificate; ``pairing_code()``
  mints a fresh code for alice (``pairing_code("bob")`` for bob).
* ``browser``: headless Chromium that trusts the site CA through its own NSS database
  (no ``ignore_https_errors``: service workers and Secure cookies need a real secure context).
* ``context``: a phone, 390x844, touch, ``is_mobile``.  ``page``: a page of it whose console
  errors, uncaught exceptions, CSP violations and failed static files FAIL the test at teardown
  (``problems`` is the collector, for a test that provokes one on purpose).
* ``paired_page``: the app opened on ``grid.a`` and paired through its pairing screen.
  ``pair(page, base_url)`` does the same for another origin (e.g. a cutting proxy).
* ``cutting_proxy(peer, cut_every_bytes=None)``: a TCP proxy in front of a peer
  (``tests/cutting_proxy.py``); the browser opens ``proxy.url_for("https")`` and TLS still
  verifies (the host certificates name 127.0.0.1).

Every test here is marked ``browser``.  Without /usr/bin/chromium (or the ``playwright`` package)
they are skipped with the reason, except under ``CI=true``, where that is a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mobile_client import Client
from pocketgrid.demo import make_sample_data
from tests.conftest import PeerProcess, SitePki, free_port, secure_args, wait_until

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
HERE = Path(__file__).resolve().parent

# What the app's pairing screen shows (W2's mobile_client/webapp/): one place to change.
PAIRING_CODE_LABEL = "Pairing code"
PAIR_BUTTON = "Pair"
#: Shown once the app is paired and has loaded the job list.
PAIRED_HEADING = "Jobs"

N_INPUTS = 4


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium libnss3-tools; .ci/run does it)"
    if shutil.which("certutil") is None:
        return "certutil is missing (apt-get install libnss3-tools; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/browser ``browser``; skip them (outside CI) without a browser."""
    missing = _missing()
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.browser)
        if missing and os.environ.get("CI") != "true":
            item.add_marker(pytest.mark.skip(reason=f"browser test: {missing}"))


@pytest.fixture(scope="session")
def _browser_available() -> None:
    missing = _missing()
    if missing:  # only reached under CI=true (skipped otherwise at collection)
        pytest.fail(f"CI=true but the browser tests cannot run: {missing}", pytrace=False)


# ---- peers --------------------------------------------------------------------------------------

@dataclass
class Grid:
    a: PeerProcess
    b: PeerProcess
    pki: SitePki
    inputs: list[str]
    peers: list[PeerProcess] = field(default_factory=list)

    @property
    def ca(self) -> str:
        return self.pki.ca


def publish_samples(peer: PeerProcess, n_inputs: int = N_INPUTS) -> list[str]:
    """The sample analysis in ``peer``'s publishing area; returns the input paths."""
    inputs = make_sample_data(peer.publish, n_inputs, n_values=2000)
    sample = resources.files("pocketgrid") / "sample"
    for name in ("histogram.py", "histogram.sub"):
        (peer.publish / name).write_bytes(sample.joinpath(name).read_bytes())
    (peer.publish / "notes").mkdir(exist_ok=True)
    (peer.publish / "notes" / "readme.txt").write_text("sample data for the histogram analysis\n")
    return inputs


@pytest.fixture(scope="session")
def grid(tmp_path_factory: pytest.TempPathFactory, site_pki: SitePki) -> Iterator[Grid]:
    root = tmp_path_factory.mktemp("browser-grid")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started: list[PeerProcess] = []
    try:
        def start(name: str, join: str | None = None) -> PeerProcess:
            args = secure_args(site_pki, name, "--threads", "32", "--agent-interval", "2")
            if join:
                args += ["--join", join]
            p = PeerProcess(name, root / name, free_port(), args, env)
            started.append(p)
            return p.start()

        a = start("site-a")
        b = start("site-b", a.url)
        inputs = publish_samples(a)
        publish_samples(b)
        carol = Client(a.url, ca=site_pki.ca, retries=0)
        carol.login(site_pki.users["carol"].cert_path, site_pki.users["carol"].key_path)
        wait_until(lambda: len(carol.system()["members"]) == 2, what="site-b to join site-a")
        wait_until(lambda: len(carol.system().get("load", [])) == 2, what="both agents' first load report")
        yield Grid(a, b, site_pki, inputs, started)
    finally:
        for p in started:
            p.stop()


def _login(grid: Grid, user: str) -> Client:
    issued = grid.pki.users[user]
    client = Client(grid.a.url, ca=grid.ca, retries=0)
    client.login(issued.cert_path, issued.key_path)
    return client


@pytest.fixture(scope="session")
def alice(grid: Grid) -> Client:
    return _login(grid, "alice")


@pytest.fixture(scope="session")
def bob(grid: Grid) -> Client:
    return _login(grid, "bob")


@pytest.fixture
def pairing_code(alice: Client, bob: Client) -> Callable[..., str]:
    """``pairing_code()`` -> a fresh single-use code for alice (``pairing_code("bob")`` for bob)."""
    def mint(user: str = "alice") -> str:
        return {"alice": alice, "bob": bob}[user].pairing_code()["code"]
    return mint


# ---- the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser_home(tmp_path_factory: pytest.TempPathFactory, site_pki: SitePki, _browser_available: None) -> Path:
    """A HOME whose NSS database trusts the site CA (how Chromium on Linux learns a private CA)."""
    home = tmp_path_factory.mktemp("chromium-home")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "pocketgrid", "-i", site_pki.ca],
                   check=True, capture_output=True)
    return home


@pytest.fixture(scope="session")
def playwright_driver(_browser_available: None) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    yield driver
    driver.stop()


@pytest.fixture(scope="session")
def browser(playwright_driver: Any, browser_home: Path) -> Iterator[Any]:
    env = {**os.environ, "HOME": str(browser_home), "XDG_CONFIG_HOME": str(browser_home / ".config"),
           "XDG_CACHE_HOME": str(browser_home / ".cache")}
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, env=env)
    yield chromium
    chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh phone: 390x844, touch, mobile; its own cookies, storage and service workers."""
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, accept_downloads=True)
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


# ---- what must never happen in a page ----------------------------------------------------------

REPORT_BINDING = "__pocketgridReportViolation"
CSP_LISTENER = """
(() => {
  const report = (e) => {
    try {
      window.%s({directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
                 line: e.lineNumber, sample: e.sample, disposition: e.disposition});
    } catch (err) { /* the binding is gone when the page closes */ }
  };
  document.addEventListener("securitypolicyviolation", report, true);
})();
""" % REPORT_BINDING

#: The browser's own log line for a request that failed or answered 4xx/5xx.  Network failures
#: are what the network tests provoke and a 401 is how the app learns it is not paired; a
#: static file of the app that fails is caught by the response check instead.
NETWORK_LOG_PREFIXES = ("Failed to load resource:",)


@dataclass
class Problem:
    kind: str  # "console", "pageerror", "csp" or "static"
    text: str
    where: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text}" + (f" ({self.where})" if self.where else "")


class ProblemCollector:
    """Collects what a user must never meet: console errors, uncaught exceptions, CSP
    violations, and app files (outside /api/) that answer 4xx/5xx."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.network_log: list[str] = []  # kept for a test to look at; never a failure

    def attach(self, ctx: Any) -> None:
        ctx.expose_binding(REPORT_BINDING, self._on_violation)
        ctx.add_init_script(CSP_LISTENER)
        ctx.on("console", self._on_console)
        ctx.on("weberror", lambda error: self.problems.append(
            Problem("pageerror", str(error.error), error.page.url if error.page else "")))
        ctx.on("response", self._on_response)

    def _on_violation(self, source: dict[str, Any], v: dict[str, Any]) -> None:
        self.problems.append(Problem(
            "csp", f"{v.get('disposition')} violation of {v.get('directive')}: blocked {v.get('blocked')!r}"
                   f" sample {v.get('sample')!r}", f"{v.get('source')}:{v.get('line')}"))

    def _on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        if msg.text.startswith(NETWORK_LOG_PREFIXES):
            self.network_log.append(msg.text)
            return
        loc = msg.location or {}
        self.problems.append(Problem("console", msg.text, f"{loc.get('url', '')}:{loc.get('lineNumber', '')}"))

    def _on_response(self, response: Any) -> None:
        path = response.url.split("://", 1)[-1].split("/", 1)[-1] if "://" in response.url else ""
        if response.status >= 400 and not path.startswith("api/") and response.url.startswith("https://"):
            self.problems.append(Problem("static", f"HTTP {response.status} for an app file", response.url))

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def clear(self) -> None:
        self.problems.clear()


@pytest.fixture
def problems() -> ProblemCollector:
    return ProblemCollector()


@pytest.fixture
def page(context: Any, problems: ProblemCollector) -> Iterator[Any]:
    """A page of the phone; console errors, page errors and CSP violations fail the test."""
    problems.attach(context)
    pg = context.new_page()
    yield pg
    try:
        pg.evaluate("0")  # deliver what is still on its way
    except Exception:  # noqa: BLE001  (the test closed the page or it crashed: nothing more to deliver)
        pass
    if problems.problems:
        listing = "\n".join(f"  {p}" for p in problems.problems)
        print(f"browser problems in {pg.url}:\n{listing}")
        pytest.fail(f"{len(problems.problems)} problem(s) in the browser:\n{listing}", pytrace=False)


# ---- the app ------------------------------------------------------------------------------------

def pair(page: Any, base_url: str, code: str, device: str | None = None) -> Any:
    """Open the app at ``base_url`` and pair it with ``code`` through the pairing screen."""
    page.goto(base_url.rstrip("/") + "/")
    page.get_by_label(PAIRING_CODE_LABEL).fill(code)
    if device is not None:
        page.get_by_label("Device name").fill(device)
    page.get_by_role("button", name=PAIR_BUTTON).click()
    page.get_by_role("heading", name=PAIRED_HEADING).wait_for()
    return page


@pytest.fixture
def paired_page(page: Any, grid: Grid, pairing_code: Callable[..., str]) -> Any:
    """The app on ``grid.a``, paired as alice through its UI (a fresh code, a fresh phone)."""
    return pair(page, grid.a.url, pairing_code())


# ---- a link that drops ----------------------------------------------------------------------------

@pytest.fixture
def cutting_proxy() -> Iterator[Callable[..., Any]]:
    """``cutting_proxy(peer, cut_every_bytes=None)`` -> a started ``CuttingProxy`` to ``peer``."""
    from tests.cutting_proxy import CuttingProxy

    started: list[Any] = []

    def make(peer: PeerProcess, cut_every_bytes: int | None = None) -> Any:
        proxy = CuttingProxy("127.0.0.1", peer.port, cut_every_bytes=cut_every_bytes)
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def unique(prefix: str) -> str:
    """A name no other test uses (jobs of one session share the peers)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
