"""The documentation site: `make docs` builds it with warnings as errors, every public name and
every exception has its place, and a headless Chromium shows the pages as a reader sees them
(title, navigation, a code block with the copy button its JavaScript adds, no console errors).

Marked slow: make test builds the docs in its system run only (the main venv, which has the docs packages).
Screenshots go to docs/_build/screens/.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, skip_or_fail
from optional_deps import require

pytestmark = pytest.mark.slow

HTML = ROOT / "docs" / "_build" / "html"
SCREENS = ROOT / "docs" / "_build" / "screens"
BUILD_SECONDS = 300  # the build takes ~15-20 s on an idle 2-core machine; this bounds a hang
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def docs_ext():
    """docs/_ext/ndshm_docs.py, the extension that generates the API pages (for its MODULES)."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        return importlib.import_module("ndshm_docs")
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the site with `make docs`, run by this interpreter (the main run's venv has the docs
    packages); the build's own -W makes any warning a failure here."""
    require("sphinx", "docs build")
    if shutil.which("make") is None:
        skip_or_fail("make is not installed")
    started = time.monotonic()
    proc = subprocess.run(["make", "--no-print-directory", "docs", f"DOCS_PYTHON={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=BUILD_SECONDS)
    assert proc.returncode == 0, f"make docs failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    print(f"make docs: {time.monotonic() - started:.1f} s")
    assert (HTML / "index.html").is_file()
    return HTML


def page_ids(path: Path) -> set:
    return set(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))


def test_every_public_name_has_its_page(site):
    """Each name of each public module's __all__ has a page holding its description (the build
    fails on a missing docstring); a submodule listed in __all__ has its module page."""
    ext = docs_ext()
    assert set(ext.public_modules()) <= set(ext.MODULES)
    checked = 0
    for modname in ext.MODULES:
        module = importlib.import_module(modname)
        assert (site / "api" / f"{modname}.html").is_file(), modname
        for name in module.__all__:
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj):
                assert (site / "api" / f"{modname}.{name}.html").is_file(), f"{modname}.{name}"
                continue
            page = site / "api" / "generated" / f"{modname}.{name}.html"
            assert page.is_file(), f"no page for {modname}.{name}"
            assert f"{modname}.{name}" in page_ids(page), f"{page} does not describe {modname}.{name}"
            checked += 1
    assert checked > 80, checked


def test_troubleshooting_explains_every_exception(site):
    """Every exception class of ndshm._errors has an anchor of its own (troubleshooting.html#name)."""
    from ndshm import _errors

    ids = page_ids(site / "troubleshooting.html")
    classes = [n for n in _errors.__all__ if isinstance(getattr(_errors, n), type)]
    assert len(classes) >= 20, classes
    assert [n for n in classes if n.lower() not in ids] == []


def test_c_header_contracts_are_rendered(site):
    """Every function the header declares has an anchor on the C library's page."""
    ext = docs_ext()
    functions = ext.declared_functions((ROOT / "csrc" / "ndshm.h").read_text(encoding="utf-8"))
    assert len(functions) > 50, functions
    ids = page_ids(site / "guide" / "c-library.html")
    assert [f for f in functions if f.replace("_", "-") not in ids] == []


def test_cli_help_is_rendered(site):
    """The command line's page holds each command's --help, taken at build time."""
    text = (site / "api" / "cli.html").read_text(encoding="utf-8")
    for cmd in docs_ext().cli_commands():
        if cmd != "help":
            assert f"ndshm {cmd}" in text, cmd
    assert "--dry-run" in text and "--min-age" in text  # gc's options, from its parser


# ---------------------------------------------------------------- in a browser


def find(names: tuple) -> str:
    for name in names:
        path = shutil.which(name) or (f"/usr/lib/chromium/{name}" if os.path.exists(f"/usr/lib/chromium/{name}") else None)
        if path:
            return path
    skip_or_fail(f"none of {', '.join(names)} is installed (apt-get install chromium chromium-driver; .ci/run does)")
    raise AssertionError("unreachable")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(site):
    """The built site over HTTP (as a reader gets it from any static host; file:// would block the
    theme's own requests)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    webdriver = require("selenium.webdriver", "browser check")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=find(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


PAGES = [
    # (page, screenshot name, words of its title, a code block the page must show)
    ("index.html", "landing", "ndshm", "ndshm.create"),
    ("api/generated/ndshm.Queue.html", "api-queue", "ndshm.Queue", None),
    ("guide/queues.html", "guide-queues", "Queues and zero-copy loans", "q.loan"),
]


@pytest.mark.parametrize("path,shot,title,code", PAGES, ids=[p[1] for p in PAGES])
def test_page_renders_in_chromium(browser, server, path, shot, title, code):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{server}/{path}")
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert title in browser.title, browser.title
    # The theme's navigation: the header's links to the top-level sections.
    nav = browser.find_elements(By.CSS_SELECTOR, "nav.navbar-nav a.nav-link, .bd-header .navbar-nav a")
    labels = {a.get_attribute("textContent").strip() for a in nav}
    assert {"User guide", "API reference"} <= labels, labels
    # Code blocks, each with the copy button sphinx-copybutton's JavaScript adds to it.
    if code:
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "div.highlight button.copybtn"))
    blocks = browser.find_elements(By.CSS_SELECTOR, "div.highlight pre")
    buttons = browser.find_elements(By.CSS_SELECTOR, "div.highlight button.copybtn")
    assert len(buttons) == len(blocks), (len(blocks), len(buttons))
    if code:
        assert any(code in b.get_attribute("textContent") for b in blocks), code
    else:  # an API page: the signature and the description of the class and its methods
        assert browser.find_elements(By.CSS_SELECTOR, "dl.py.class dt.sig")
        assert browser.find_elements(By.CSS_SELECTOR, "dl.py.method")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    SCREENS.mkdir(parents=True, exist_ok=True)
    png = SCREENS / f"{shot}.png"
    assert browser.save_screenshot(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_console_check_sees_an_error(browser, server):
    """The console check can fail: a page whose script throws is reported as SEVERE."""
    browser.get_log("browser")
    browser.get(f"{server}/index.html")
    browser.execute_script("setTimeout(function () { throw new Error('ndshm-docs-check'); }, 0)")
    time.sleep(0.5)
    assert any("ndshm-docs-check" in e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE")
