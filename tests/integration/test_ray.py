"""`dlmi bench --ray` on a local Ray cluster of this machine, tiny-random: the same rows as a
serial run, no row lost or duplicated when a worker or the driver is killed, clear errors.

The error cases come first: they need Ray not yet initialised in this process (an initialised
Ray is used as it is, whatever the address), and the cluster fixture starts it once for the
rest of the module."""

import logging
import os
import signal
import socket
import threading
import time

import pytest
import ray

from dlmi.cli import main
from dlmi.evaluation.bench import RayOptions, load_spec, run_bench
from dlmi.evaluation.results_io import read_rows, row_key

GRID = dict(model="tiny-random", methods=["dlmi", "random"], prompt_lengths=[4],
            budgets=[4, 8], seeds=[0, 1], eval_every=4, batch_size=3, device="cpu",
            targets={"k": [1, 3], "per_k": 2, "length": 5, "sigma": 1.0, "seed": 1})
# What a row found and how; seconds, dates and hosts differ between runs by nature.
SAME = ("prompt_ids", "output_ids", "target_ids", "lcs_at_budget", "soft_lcs_at_budget",
        "exact_match", "steps", "solved_at_step", "overlap_rate", "prompt_perplexity",
        "target_perplexity")


def ray_spec(**options):
    spec = load_spec(**GRID)
    spec.executor.ray = RayOptions(**options)
    return spec


def test_unreachable_address_is_one_line_and_exit_2(tmp_path, capsys):
    assert not ray.is_initialized()
    out = tmp_path / "r.jsonl"
    code = main(["bench", "--model", "tiny-random", "--methods", "random", "--out", str(out),
                 "--ray", "127.0.0.1:1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no Ray cluster answers at 127.0.0.1:1" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    code = main(["bench", "--model", "tiny-random", "--out", str(out), "--ray", "nowhere"])
    assert code == 2 and "is not HOST:PORT" in capsys.readouterr().err


def test_an_address_where_something_else_listens_times_out_with_one_line(tmp_path, capsys):
    assert not ray.is_initialized()
    server = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks Ray
    held = []
    accepting = threading.Thread(target=lambda: held.append(server.accept()), daemon=True)
    accepting.start()
    port = server.getsockname()[1]
    cfg = tmp_path / "b.yaml"
    cfg.write_text("model: tiny-random\nmethods: [random]\n"
                   f"executor: {{ray: {{address: '127.0.0.1:{port}', connect_timeout: 5}}}}\n")
    started = time.monotonic()
    code = main(["bench", "--config", str(cfg), "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    server.close()
    assert code == 2 and f"no Ray cluster answered at 127.0.0.1:{port} within 5 s" in err
    assert len(err.splitlines()) == 1 and time.monotonic() - started < 30


def test_missing_gpus_is_one_line_and_exit_2(tmp_path, capsys):
    assert not ray.is_initialized()
    cfg = tmp_path / "b.yaml"
    cfg.write_text("model: tiny-random\nmethods: [random]\nexecutor: {ray: {gpus_per_task: 1}}\n")
    code = main(["bench", "--config", str(cfg), "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has 0 GPU(s) and gpus_per_task is 1" in err
    assert len(err.splitlines()) == 1
    assert not ray.is_initialized()  # the cluster it started for the check is gone


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_ray_and_serial_runs_give_the_same_rows(tmp_path, tiny_lm, cluster, capsys):
    serial = tmp_path / "serial.jsonl"
    assert run_bench(load_spec(**GRID), serial, lm=tiny_lm) == 16
    cfg = tmp_path / "b.yaml"
    cfg.write_text("model: tiny-random\nmethods: [dlmi, random]\nprompt_lengths: [4]\n"
                   "budgets: [4, 8]\nseeds: [0, 1]\neval_every: 4\nbatch_size: 3\n"
                   "targets: {k: [1, 3], per_k: 2, length: 5, sigma: 1.0, seed: 1}\n")
    on_ray = tmp_path / "ray.jsonl"
    assert main(["bench", "--config", str(cfg), "--device", "cpu", "--out", str(on_ray),
                 "--ray", "--quiet"]) == 0
    assert "wrote 16 row(s)" in capsys.readouterr().out
    by_key = {row_key(r): r for r in read_rows(serial)}
    rows = read_rows(on_ray)
    assert len(rows) == 16 and {row_key(r) for r in rows} == set(by_key)
    for row in rows:
        expected = by_key[row_key(row)]
        assert {f: row[f] for f in SAME} == {f: expected[f] for f in SAME}
        assert row["provenance"]["executor"] == "ray"
        assert row["provenance"]["host"] and row["provenance"]["device"] == "cpu"
        assert row["provenance"]["worker_pid"] != os.getpid()
    assert len({r["provenance"]["worker_pid"] for r in rows}) == 2  # both workers took cells


def busy_workers() -> list[int]:
    """Pids of the Ray workers running a cell now (Ray titles them by the method they run)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::BenchWorker.run"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def test_a_killed_worker_loses_no_row_and_duplicates_none(tmp_path, cluster, caplog):
    out = tmp_path / "r.jsonl"
    killed = []

    def kill_a_busy_worker(row):
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            busy = busy_workers()  # SIGKILL a worker in the middle of a cell, as a crash would
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)

    # Slow cells (dlmi with 32 samples, 64 steps) of 4 rows: workers are busy most of the time.
    spec = ray_spec()
    spec.batch_size, spec.budgets = 4, [8, 64]
    spec.method_options = {"dlmi": {"samples": 32}}
    assert run_bench(spec, out, on_row=kill_a_busy_worker) == 16
    rows = read_rows(out)
    assert len(rows) == 16 and len({row_key(r) for r in rows}) == 16
    assert killed and "a Ray worker died" in caplog.text


def test_a_killed_driver_resumes_serially_and_on_ray(tmp_path, tiny_lm, cluster):
    out = tmp_path / "r.jsonl"
    seen = []

    def die_after(n):
        def on_row(row):
            seen.append(row)
            if len(seen) == n:
                raise KeyboardInterrupt  # the driver is killed with n rows on disk
        return on_row

    with pytest.raises(KeyboardInterrupt):
        run_bench(ray_spec(), out, on_row=die_after(3))
    assert len(read_rows(out)) == 3
    with pytest.raises(KeyboardInterrupt):  # resumed serially, killed again
        run_bench(load_spec(**GRID), out, lm=tiny_lm, on_row=die_after(8))
    assert len(read_rows(out)) == 8
    assert run_bench(ray_spec(), out) == 8  # and finished on Ray
    rows = read_rows(out)
    assert len(rows) == 16 and len({row_key(r) for r in rows}) == 16
    assert run_bench(ray_spec(), out) == 0


def test_a_targets_file_is_read_by_the_driver(tmp_path, cluster, monkeypatch):
    (tmp_path / "t.jsonl").write_text('{"id": "a", "target_ids": [5, 6, 7]}\n{"text": "hi"}\n')
    monkeypatch.chdir(tmp_path)  # a relative path: the driver's, which workers need not share
    spec = load_spec(model="tiny-random", methods=["random"], prompt_lengths=[3], budgets=[2],
                     seeds=[0], eval_every=2, targets_file="t.jsonl", device="cpu")
    spec.executor.ray = RayOptions(workers=1)
    assert run_bench(spec, "r.jsonl") == 2
    rows = {r["target_id"]: r for r in read_rows("r.jsonl")}
    assert rows["a"]["target_ids"] == [5, 6, 7] and set(rows) == {"a", "t1"}
