"""popbox.metrics: multiprocess mode as a forking master uses it (real processes, one
directory, one collector summing them over real HTTP), and the bounded label values."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from popbox.metrics import ServerMetrics

# A master as the worker-process code runs one: prepare before prometheus_client is
# imported, count something itself, fork two workers that count, reap them (marking only
# the first dead), serve the sums until stdin closes.
MASTER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from popbox import metrics
    from popbox.config import load_config

    directory = metrics.prepare_multiprocess(Path(sys.argv[2]))
    metrics.current().connections.inc()  # made before the fork, used after it
    workers = []
    for n in (1, 2):
        pid = os.fork()
        if pid == 0:
            m = metrics.current()
            m.connections.inc(10 * n)
            m.connections_active.inc()
            m.command("RETR")
            m.command("NOPE")
            m.login("ok", "PLAIN")
            m.sent_bytes.inc(1000 * n)
            m.retr_duration.observe(0.002 * n)
            os._exit(0)
        workers.append(pid)
    for pid in workers:
        os.waitpid(pid, 0)
    metrics.worker_exited(workers[0])
    assert metrics.served_by_master()
    exporter = metrics.start_multiprocess_server(load_config(Path(sys.argv[1])))
    print(exporter.address[1], flush=True)
    sys.stdin.read()
    exporter.close()
    metrics.cleanup_multiprocess()
    print("directory gone:", not directory.exists(), not metrics.served_by_master(), flush=True)
    """
)


def _env() -> dict[str, str]:
    hidden = ("PROMETHEUS_MULTIPROC_DIR", "POPBOX_METRICS_MASTER")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    src = str(Path(__file__).parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _config(tmp_path: Path) -> Path:
    (tmp_path / "users").write_text("alice:{PLAIN}secret\n")
    config = tmp_path / "popbox.toml"
    config.write_text(
        '[mail]\nlocation = "maildir:mail/%u"\n[auth]\npasswd_file = "users"\n'
        '[metrics]\naddress = "127.0.0.1"\nport = 0\n'
    )
    return config


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    with subprocess.Popen(
        [sys.executable, "-c", MASTER, str(_config(tmp_path)), str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    ) as master:
        assert master.stdout is not None and master.stdin is not None
        try:
            port = int(master.stdout.readline())
            # Each process's values are in its own files in the directory.
            assert len(list(directory.glob("counter_*.db"))) == 3
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            master.stdin.close()
            assert master.stdout.readline() == "directory gone: True True\n"
            assert master.wait(10) == 0
        finally:
            if master.poll() is None:
                master.kill()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("popbox_connections_total", ())] == 1 + 10 + 20
    # livesum: the worker marked dead no longer counts; the other (not marked) still does.
    assert samples[("popbox_connections_active", ())] == 1
    assert samples[("popbox_commands_total", (("command", "RETR"),))] == 2
    assert samples[("popbox_commands_total", (("command", "unknown"),))] == 2
    assert samples[("popbox_logins_total", (("mechanism", "PLAIN"), ("result", "ok")))] == 2
    assert samples[("popbox_sent_bytes_total", ())] == 3000
    assert samples[("popbox_retr_duration_seconds_count", ())] == 2
    assert samples[("popbox_retr_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    assert samples[("popbox_retr_duration_seconds_bucket", (("le", "0.005"),))] == 2
    assert samples[("popbox_retr_duration_seconds_sum", ())] == pytest.approx(0.006)


def test_prepare_after_prometheus_client_was_imported_is_refused() -> None:
    code = (
        "import prometheus_client\n"
        "from popbox import metrics\n"
        "try:\n"
        "    metrics.prepare_multiprocess()\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout == (
        "prepare_multiprocess() must run before prometheus_client is imported\n"
    )


def test_label_values_stay_in_fixed_sets() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.command("RETR")
    metrics.command("X" * 1000)  # the core sends only known keywords; anything else folds
    metrics.login("failed", "NOT-A-MECHANISM")
    assert metrics.commands.labels(command="unknown")._value.get() == 1
    assert metrics.logins.labels(result="failed", mechanism="other")._value.get() == 1
    with pytest.raises(ValueError, match="unknown login result"):
        metrics.login("whatever", "USER")
    with pytest.raises(ValueError, match="unknown refusal reason"):
        metrics.refused("whatever")
    with pytest.raises(ValueError, match="unknown store operation"):
        metrics.store_error("whatever")
