"""python -m ndshm ls | info NAME | rm NAME... | gc"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys

import pytest

import ndshm
from conftest import child_env, dir_files, run_cli as cli, run_python
from ndshm import _cli

# Argument parsing, messages and exit statuses need no process of their own: cli() runs the command
# line in this process. cli_process() starts `python -m ndshm` where the process is what is tested:
# its exit status through sys.exit, a command that must not hang (a timeout kills it, not the test
# run), and output into a pipe or into another program.


def cli_process(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """``python -m ndshm ARGS`` in a new interpreter."""
    return subprocess.run([sys.executable, "-m", "ndshm", *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env(**env))


def test_human_sizes():
    assert _cli.human(0) == "0 B" and _cli.human(1023) == "1023 B"
    assert _cli.human(4096) == "4.0 KiB" and _cli.human(3 << 29) == "1.5 GiB"


def test_ls_lists_a_segment_of_another_process(unique_name):
    child = subprocess.Popen([sys.executable, "-c", f"""
import ndshm, sys
a = ndshm.create({unique_name!r}, (250, 4), "f8", meta={{"who": "child"}})
print("ready", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert child.stdout.readline().strip() == "ready"
        out = cli("ls")
        assert out.returncode == 0, out.stderr
        line = [l for l in out.stdout.splitlines() if l.startswith(unique_name)][0]
        assert "float64" in line and "(250, 4)" in line and str(child.pid) in line and "yes" in line
        assert "KiB" in line and "NAME" in out.stdout.splitlines()[0]
        info = cli("info", unique_name)
        assert info.returncode == 0 and "in use:       True" in info.stdout and "'who': 'child'" in info.stdout
    finally:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    assert not ndshm.exists(unique_name)  # the creator exited: its non-persistent segment went


def test_rm_and_errors(unique_name):
    seg = ndshm.Segment.create(unique_name, 10, persist=True)
    seg.close()
    out = cli_process("rm", unique_name, unique_name + "-missing")  # the exit statuses of the process: 1, 2, 0
    assert out.returncode == 1 and unique_name + "-missing" in out.stderr
    assert not ndshm.exists(unique_name)
    assert cli("info", unique_name).returncode == 1
    assert cli_process("bogus").returncode == 2
    assert cli().returncode == 2
    assert cli_process("--help").returncode == 0
    assert cli("rm", "bad/name").returncode == 1


def test_ls_shows_corrupt_files(tmp_path):
    d = str(tmp_path)
    (tmp_path / "ndshm.junk").write_bytes(os.urandom(4096))
    (tmp_path / "not-ours").write_bytes(b"x")
    out = cli("--dir", d, "ls")
    assert out.returncode == 0
    assert "junk" in out.stdout and "corrupt" in out.stdout and "not-ours" not in out.stdout
    assert "1 segment in" in out.stdout


def test_gc_dry_run_and_env_dir(tmp_path):
    d = str(tmp_path)
    run_python("""
        import ndshm, os
        a = ndshm.create("orphan", 5)
        os._exit(0)  # no atexit: the segment is left behind, mapped by nobody
    """, NDSHM_DIR=d)
    assert os.path.exists(os.path.join(d, "ndshm.orphan"))
    out = cli("gc", "--dry-run", "--min-age", "0", NDSHM_DIR=d)
    assert "would remove orphan" in out.stdout and os.path.exists(os.path.join(d, "ndshm.orphan"))
    out = cli("gc", "--min-age", "0", NDSHM_DIR=d)
    assert "removed orphan" in out.stdout and not os.path.exists(os.path.join(d, "ndshm.orphan"))


def test_gc_collects_orphaned_queues_but_not_persistent_ones(tmp_path):
    d = str(tmp_path)
    run_python("""
        import ndshm, os
        q = ndshm.Queue("orphan-q", slots=2, slot_bytes=64)
        k = ndshm.Queue("kept-q", slots=2, slot_bytes=64, persist=True)
        q.put(list(range(3))); k.put(list(range(4)))
        os._exit(0)  # a crash: no close, no atexit
    """, NDSHM_DIR=d)
    for n in ("orphan-q", "kept-q"):
        assert os.path.exists(os.path.join(d, "ndshm." + n))
    out = cli("gc", "--min-age", "0", NDSHM_DIR=d)
    assert "removed orphan-q" in out.stdout and "kept-q" not in out.stdout
    assert not os.path.exists(os.path.join(d, "ndshm.orphan-q"))
    with ndshm.Queue.attach("kept-q", dir=d) as k:
        assert k.get(timeout=5).tolist() == [0, 1, 2, 3]
    ndshm.unlink("kept-q", dir=d)


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for n in needles:
        assert n in out.stderr, out.stderr


def test_gc_ls_info_do_not_hang_on_fifos_or_follow_symlinks(tmp_path):
    d = str(tmp_path)  # in processes: a command that hangs is killed by its timeout, not the test run
    os.mkfifo(os.path.join(d, "ndshm.f1"))  # anyone can plant one in /dev/shm
    os.symlink(os.path.join(d, "ndshm.f1"), os.path.join(d, "ndshm.tofifo"))
    (tmp_path / "target").write_bytes(bytes(64))  # a blank file: gc would take it under its own name
    os.symlink(os.path.join(d, "target"), os.path.join(d, "ndshm.toblank"))
    os.mkdir(os.path.join(d, "ndshm.sub"))
    (tmp_path / "ndshm.blank").write_bytes(bytes(64))
    old = 1_000_000_000
    for n in ("ndshm.blank", "target"):
        os.utime(os.path.join(d, n), (old, old))
    os.utime(os.path.join(d, "ndshm.toblank"), (old, old), follow_symlinks=False)
    for args in (("gc", "--dry-run", "--min-age", "0"), ("gc", "--min-age", "0")):
        out = cli_process("--dir", d, *args, timeout=20)
        assert out.returncode == 0, out.stderr
        assert " blank (" in out.stdout and "1 segment from" in out.stdout, out.stdout
    for n in ("ndshm.f1", "ndshm.tofifo", "ndshm.toblank", "target", "ndshm.sub"):
        assert os.path.lexists(os.path.join(d, n)), n
    assert not os.path.exists(os.path.join(d, "ndshm.blank"))
    out = cli_process("--dir", d, "ls", timeout=20)
    assert out.returncode == 0 and "f1" in out.stdout and "4 segments" in out.stdout
    assert cli_process("--dir", d, "info", "f1", "tofifo", timeout=20).returncode == 0
    assert cli_process("--dir", d, "rm", "tofifo", timeout=20).returncode == 0  # by name: the link, not its target
    assert os.path.exists(os.path.join(d, "ndshm.f1")) and not os.path.lexists(os.path.join(d, "ndshm.tofifo"))


def test_blank_or_ours_skips_non_regular_files(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(16))
    link = str(tmp_path / "link")
    os.symlink(str(blank), link)
    # in a child, so that a blocking open cannot hang the test run itself
    out = run_python(f"""
        from ndshm import _cli
        from ndshm._ownership import remove_if_unused
        print(_cli._blank_or_ours({fifo!r}), _cli._blank_or_ours({link!r}), _cli._blank_or_ours({str(blank)!r}),
              _cli._blank_or_ours({str(tmp_path)!r}), remove_if_unused({link!r}, 0))
    """, timeout=20)
    assert out.stdout.split() == ["False", "False", "True", "False", "False"]
    assert os.path.lexists(link)


def test_bad_dir_is_a_one_line_error(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    missing = str(tmp_path / "missing")
    for d in (str(f), missing):
        for args in (("ls",), ("gc", "--dry-run"), ("info", "x"), ("rm", "x")):
            _one_line_error(cli("--dir", d, *args), d)
        _one_line_error(cli("ls", NDSHM_DIR=d), d)
    assert cli("--dir", missing, "--help").returncode == 0


def test_gc_min_age_must_be_finite_and_not_negative(tmp_path):
    d = str(tmp_path)
    (tmp_path / "ndshm.blank").write_bytes(bytes(64))
    for bad in ("nan", "-5", "inf", "-inf", "x", "NaN"):
        for args in (("--min-age", bad), (f"--min-age={bad}",), ("--dry-run", "--min-age", bad)):
            _one_line_error(cli("--dir", d, "gc", *args), repr(bad))
    _one_line_error(cli("--dir", d, "gc", "--min-age"), "--min-age")
    _one_line_error(cli("--dir", d, "gc", "--bogus"), "--bogus")
    assert os.path.exists(os.path.join(d, "ndshm.blank"))  # young: kept by the default grace period
    out = cli("--dir", d, "gc", "--min-age", "1e6")
    assert out.returncode == 0 and "removed 0 segments" in out.stdout
    assert os.path.exists(os.path.join(d, "ndshm.blank"))


def _segments_of_every_kind(d: str) -> list:
    """An array with JSON meta, one with bytes meta, a queue and a lock in ``d``; keep the result alive."""
    return [ndshm.create("arr", (2, 3), "f4", dir=d, meta={"who": "test", "n": [1, 2]}),
            ndshm.create("raw", 7, "u1", dir=d, meta=b"\x00\xffbytes"),
            ndshm.Queue("que", slots=16, slot_bytes=64, dir=d),
            ndshm.Lock("lck", dir=d)]


def test_ls_json_has_every_field_of_list_and_reads_with_json_tool(tmp_path):
    d = str(tmp_path)
    keep = _segments_of_every_kind(d)
    pipe = subprocess.run(f"'{sys.executable}' -m ndshm ls --json --dir '{d}' | '{sys.executable}' -m json.tool",
                          shell=True, capture_output=True, text=True, timeout=60, env=child_env())
    assert pipe.returncode == 0 and "Traceback" not in pipe.stderr, pipe.stderr
    objs = {o["name"]: o for o in json.loads(pipe.stdout)}
    recs = {r.name: r for r in ndshm.list(d)}
    assert sorted(objs) == sorted(recs) == ["arr", "lck", "que", "raw"]
    for name, r in recs.items():
        o = objs[name]
        assert set(r._fields) <= set(o) and "kind" in o, o
        for field in ("name", "size", "creator_pid", "in_use", "persist", "status", "path", "kind", "slots",
                      "slot_bytes"):
            assert o[field] == getattr(r, field), (name, field)
        assert o["dtype"] == str(r.dtype) and tuple(o["shape"]) == r.shape
        assert datetime.datetime.fromisoformat(o["created"]) == r.created
    assert objs["arr"]["meta"] == {"who": "test", "n": [1, 2]} and objs["arr"]["meta_encoding"] == "json"
    assert base64.b64decode(objs["raw"]["meta"]) == b"\x00\xffbytes" and objs["raw"]["meta_encoding"] == "base64"
    assert (objs["que"]["kind"], objs["que"]["slots"], objs["que"]["slot_bytes"]) == ("queue", 16, 64)
    assert objs["lck"]["kind"] == "sync" and objs["arr"]["kind"] == "array"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert json.loads(cli("--dir", str(empty), "ls", "--json").stdout) == []
    keep[2].close()


def test_ls_kind_column_shows_queues_as_queues(tmp_path):
    d = str(tmp_path)
    keep = _segments_of_every_kind(d)
    out = cli("--dir", d, "ls")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "KIND", "SIZE"]
    kinds = {ln.split()[0]: ln.split()[1] for ln in rows[:-1]}
    assert kinds == {"arr": "array", "raw": "array", "que": "queue", "lck": "sync"}
    que = [ln for ln in rows if ln.startswith("que ")][0]
    assert "uint8" not in que and "16 slots x 64 B" in que, que
    info = cli("--dir", d, "info", "que")
    assert info.returncode == 0, info.stderr
    fields = dict((k, v.strip()) for k, v in (ln.split(":", 1) for ln in info.stdout.splitlines()))
    assert (fields["kind"], fields["slots"], fields["slot bytes"]) == ("queue", "16", "64 B")
    assert "dtype" not in fields and "shape" not in fields
    keep[2].close()


def test_ls_filters_by_name_and_glob(tmp_path):
    d = str(tmp_path)
    keep = [ndshm.create(n, 1, dir=d) for n in ("job-1", "job-2", "other")]
    names = lambda out: [ln.split()[0] for ln in out.stdout.splitlines()[1:-1]]  # noqa: E731
    out = cli("--dir", d, "ls", "job-*")
    assert out.returncode == 0 and names(out) == ["job-1", "job-2"] and "2 segments" in out.stdout
    out = cli("--dir", d, "ls", "other", "job-2")
    assert out.returncode == 0 and names(out) == ["job-2", "other"]
    out = cli("--dir", d, "ls", "--json", "job-?")
    assert [o["name"] for o in json.loads(out.stdout)] == ["job-1", "job-2"]
    out = cli("--dir", d, "ls", "other", "missing", "nomatch*")
    assert out.returncode == 1 and names(out) == ["other"]
    assert "'missing'" in out.stderr and "'nomatch*'" in out.stderr and len(out.stderr.splitlines()) == 2
    del keep


def test_unknown_options_are_one_line_errors_for_every_command(tmp_path):
    d = str(tmp_path)
    for args in (("ls", "-l"), ("ls", "--bogus"), ("list", "-l"), ("info", "-l", "x"), ("rm", "--force", "x"),
                 ("gc", "-l"), ("-l", "ls"), ("--bogus",)):
        bad = [a for a in args if a.startswith("-")][0]
        out = cli("--dir", d, *args)
        assert out.returncode == 2, (args, out.stderr)
        _one_line_error(out, bad)
    _one_line_error(cli("--dir", d, "gc", "extra"), "'extra'")
    assert dir_files(d) == []


def test_help_version_and_dir_forms(tmp_path):
    d = str(tmp_path)
    keep = ndshm.create("seg", 3, dir=d)
    for cmd in ("info", "ls", "rm", "gc"):
        out = cli(cmd, "--help")
        assert out.returncode == 0 and out.stdout.startswith("usage:") and f" {cmd} " in out.stdout.splitlines()[0]
        assert "no segment" not in out.stdout + out.stderr
    assert cli("help", "info").stdout == cli("info", "--help").stdout
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"ndshm {ndshm.__version__}"
    for args in (("--dir=" + d, "ls"), ("ls", "--dir=" + d), ("ls", "--dir", d), ("--dir", d, "ls")):
        out = cli(*args)
        assert out.returncode == 0 and "seg " in out.stdout and f"1 segment in {d}" in out.stdout, args
    out = cli("--dir=" + d, "info", "seg")
    assert out.returncode == 0 and f"{d}/ndshm.seg" in out.stdout
    del keep


@pytest.mark.slow
def test_help_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    d = str(tmp_path)
    keep = [ndshm.create(f"s{i}", 1, dir=d) for i in range(3)]
    for args in (("--help",), ("--dir", d, "ls"), ("--dir", d, "ls", "--json"), ("--dir", d, "info", "s1")):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before the command writes a byte, as `| head -1` is after one line
        try:
            proc = subprocess.run([sys.executable, "-m", "ndshm", *args], stdout=w, stderr=subprocess.PIPE,
                                  text=True, timeout=60, env=child_env())
        finally:
            os.close(w)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and proc.stderr == "", proc.stderr
        assert proc.returncode in (0, 1), proc.returncode
    head = subprocess.run(f"'{sys.executable}' -m ndshm --help | head -1", shell=True, capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert head.stdout.startswith("usage: ") and head.stderr == ""
    del keep


@pytest.mark.slow
def test_bench_help_names_the_command():
    # in a process: bench runs bench/run_all.py in a child that writes to this process's stdout
    out = cli_process("bench", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m ndshm bench") and "run_all.py" not in out.stdout
    out = cli_process("bench", "--bogus")
    assert out.returncode == 2 and "python -m ndshm bench" in out.stderr and "run_all.py" not in out.stderr


def test_error_lines_name_the_path_once(tmp_path):
    d = str(tmp_path)
    path = os.path.join(d, "ndshm.nope")
    for cmd in ("info", "rm"):
        out = cli("--dir", d, cmd, "nope")
        _one_line_error(out, path)
        assert out.stderr.count(path) == 1 and out.stderr.count("nope") == 1, out.stderr
        assert out.returncode == 1


def test_gc_keeps_a_handed_over_segment_until_its_receiver_claims_it(tmp_path):
    d = str(tmp_path)
    run_python("""
        import ndshm, os, pickle, sys
        handed = ndshm.create("handed", 4, dir=sys.argv[1], owner="receiver")
        ref = pickle.dumps(handed)  # its receiver has not unpickled it yet
        orphan = ndshm.create("orphan", 4, dir=sys.argv[1])
        os._exit(0)
    """, d)
    for args in (("--dry-run",), ()):  # --min-age 0 for both, but a hand-over waits longer for its receiver
        out = cli("--dir", d, "gc", "--min-age", "0", *args)
        assert out.returncode == 0, out.stderr
        assert " orphan (" in out.stdout and " handed (" not in out.stdout, out.stdout
        assert " 1 segment from" in out.stdout, out.stdout
    assert dir_files(d) == ["ndshm.handed"]
