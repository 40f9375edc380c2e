"""`python -m bench` and the benches agree on the results files: every bench the runner lists writes
bench/results/<name>.json from its run(), and the runner fails a bench whose file this run did not write
(indicators.json was once written only by the indicator bench's own entry point)."""

from __future__ import annotations

import importlib
import inspect
import os

import pytest

import bench.__main__ as runner
from bench import common


@pytest.mark.parametrize("name", runner.BENCHES)
def test_every_bench_the_runner_lists_writes_its_results_file_from_run(name):
    module = importlib.import_module(f"bench.bench_{name}")
    assert f'write_results("{name}"' in inspect.getsource(module.run), (
        f"bench/bench_{name}.py: run() must write bench/results/{name}.json (python -m bench calls run())"
    )


def test_runner_fails_a_bench_whose_results_file_this_run_did_not_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    stale = tmp_path / "reconcile.json"
    stale.write_text("{}\n")
    os.utime(stale, (0, 0))  # a file from an earlier run does not count

    def writes() -> dict:
        common.write_results("indicators", {"goals": {}})
        return {"goals": {}}

    benches = {"indicators": writes, "reconcile": lambda: {"concurrent_fetch_s": 0.1}}
    monkeypatch.setattr(runner, "_load", lambda name: benches[name])
    assert runner.main(["indicators", "reconcile"]) == 1
    captured = capsys.readouterr()
    table = {line.split()[0]: line for line in captured.out.splitlines()
             if line.split()[:1] in (["indicators"], ["reconcile"])}
    assert "FAILED" not in table["indicators"]
    assert "FAILED: RuntimeError: bench_reconcile.run() wrote no results file" in table["reconcile"]
    assert str(stale) in captured.err  # the whole message, with the path, in the traceback
