"""``ndshm ls`` shows the blocks ``ndshm.compat`` made (kind ``compat``) and ``ndshm gc`` reclaims
those whose creator died, through the real command line against a private directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import child_env, run_cli


@pytest.fixture
def shm_dir():
    """A private directory on /dev/shm's tmpfs (user xattrs work there)."""
    d = tempfile.mkdtemp(prefix="ndshm-cli-compat-", dir="/dev/shm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _holder(d: str) -> tuple[subprocess.Popen, str]:
    """A child that creates a 4 KiB compat block in ``d``, prints its name and waits until killed."""
    src = f"""
        import sys
        from ndshm.compat import shared_memory
        shared_memory.SHM_DIR = {d!r}
        shm = shared_memory.SharedMemory(create=True, size=4096)
        print(shm.name.lstrip("/"), flush=True)
        sys.stdin.read()
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(src)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=child_env())
    name = p.stdout.readline().strip()
    assert name, "the child did not start"
    return p, name


def test_ls_shows_compat_blocks_and_gc_reclaims_a_dead_creators(shm_dir):
    dead, dead_name = _holder(shm_dir)
    live, live_name = _holder(shm_dir)
    foreign = os.path.join(shm_dir, "psm_foreign")  # another tool's block: neither listed nor removed
    with open(foreign, "wb") as f:
        f.write(bytes(64))
    try:
        out = run_cli("--dir", shm_dir, "ls", "--json")
        assert out.returncode == 0, out.stderr
        recs = {r["name"]: r for r in json.loads(out.stdout)}
        assert set(recs) == {dead_name, live_name}
        assert recs[dead_name]["kind"] == "compat" and recs[dead_name]["size"] == 4096
        assert recs[dead_name]["creator_pid"] == dead.pid and recs[dead_name]["in_use"] is True
        table = run_cli("--dir", shm_dir, "ls").stdout
        assert any(line.startswith(live_name) and "compat" in line for line in table.splitlines())

        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        dry = run_cli("--dir", shm_dir, "gc", "--dry-run")
        assert dry.returncode == 0 and f"would remove compat block {dead_name}" in dry.stdout
        assert os.path.exists(os.path.join(shm_dir, dead_name))
        gc = run_cli("--dir", shm_dir, "gc")
        assert gc.returncode == 0 and f"removed compat block {dead_name}" in gc.stdout, gc.stdout + gc.stderr
        assert not os.path.exists(os.path.join(shm_dir, dead_name))
        assert os.path.exists(os.path.join(shm_dir, live_name)) and os.path.exists(foreign)
        assert {r["name"] for r in json.loads(run_cli("--dir", shm_dir, "ls", "--json").stdout)} == {live_name}
    finally:
        for p in (dead, live):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            p.stdin.close()
            p.stdout.close()
