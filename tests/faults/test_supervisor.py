"""make run's supervisor (portal.runstack.Supervisor) on small real processes: restart with the exit cause,
backoff, process groups killed with their leader, and a crash loop that stops the stack naming the component."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from portal import runstack

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(runstack, "BACKOFF_MIN_S", 0.05)
    monkeypatch.setattr(runstack, "BACKOFF_MAX_S", 0.2)


def run_until(supervisor: runstack.Supervisor, done, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        supervisor.check()
        time.sleep(0.05)


def test_a_killed_component_is_restarted_with_its_exit_cause(fast_backoff, capsys):
    supervisor = runstack.Supervisor({"sleeper": SLEEPER, "other": SLEEPER})
    try:
        supervisor.start_all()
        sleeper, other = supervisor.components["sleeper"], supervisor.components["other"]
        first, other_pid = sleeper.proc.pid, other.proc.pid
        os.kill(first, signal.SIGKILL)
        run_until(supervisor, lambda: sleeper.proc.pid != first and sleeper.alive())
        out = capsys.readouterr().out
        assert f"sleeper (pid {first}) killed by SIGKILL; restarting it in" in out
        assert f"restarted sleeper (pid {sleeper.proc.pid}, was {first}" in out
        assert other.proc.pid == other_pid and other.alive()  # the others are left alone
        assert not supervisor.stopping
    finally:
        supervisor.stop_all()
    assert not sleeper.alive() and not other.alive()


def test_a_dead_leader_takes_its_process_group_with_it(fast_backoff, tmp_path: Path):
    # The leader starts a child in its group (as gunicorn and Celery do) and is killed: the child goes too.
    pidfile = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    supervisor = runstack.Supervisor({"leader": [sys.executable, "-c", script]})
    try:
        supervisor.start_all()
        leader = supervisor.components["leader"]
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        os.kill(leader.proc.pid, signal.SIGKILL)
        run_until(supervisor, lambda: leader.restart_at is not None or leader.restarts)

        def gone() -> bool:
            status = Path(f"/proc/{child}/status")
            return not status.exists() or "zombie" in status.read_text().lower()

        deadline = time.monotonic() + 5
        while not gone():
            assert time.monotonic() < deadline, "the orphan survived its leader"
            time.sleep(0.05)
    finally:
        supervisor.stop_all()


def test_a_crash_loop_stops_the_stack_naming_the_component_and_its_last_lines(fast_backoff, monkeypatch, capsys):
    monkeypatch.setattr(runstack, "CRASH_LOOP_RESTARTS", 3)
    crasher = [sys.executable, "-c", "import sys; print('cannot open the database', flush=True); sys.exit(3)"]
    supervisor = runstack.Supervisor({"crasher": crasher, "sleeper": SLEEPER})
    try:
        supervisor.start_all()
        run_until(supervisor, lambda: supervisor.stopping)
    finally:
        supervisor.stop_all()
    out = capsys.readouterr().out
    assert supervisor.crash_looped is supervisor.components["crasher"]
    assert "crasher exited with status 3 after 3 restarts within 60 s: it is crash-looping" in out
    assert "    crasher | cannot open the database" in out
    assert not supervisor.components["sleeper"].alive()
