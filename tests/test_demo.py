"""The LIF-vs-CLIF demo learns, starts both neurons fairly, and writes what it reports."""
import csv
import importlib.util
import math
import time

import pytest
import torch

from clif_kernels import cli
from clif_kernels.tools import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two short delays, one seed, a fixed number of updates (not a time budget), so the result
    does not depend on how busy the machine is."""
    out = tmp_path_factory.mktemp("demo")
    results, curves, grads, table = demo.run(seeds=1, delays=(0, 4), iters=50, grad_delay=4,
                                             out=str(out))
    return out, results, curves, grads, table


def test_demo_learns_at_the_shortest_delay(tiny_run):
    _, results, _, _, table = tiny_run
    assert [r["delay"] for r in table] == [0, 4]
    # Chance is 25%; at delay 0 both networks learn the cue within 50 updates.
    for kind in demo.KINDS:
        acc = [r["test_acc"] for r in results if r["delay"] == 0 and r["neuron"] == kind]
        assert acc and acc[0] >= 0.6, (kind, acc)
    for r in results:
        assert r["updates"] == 50
        assert 0.0 <= r["final_test_acc"] <= 1.0


def test_demo_measures_gradient_per_step(tiny_run):
    _, _, _, grads, _ = tiny_run
    T = demo.CUE_STEPS + 4 + demo.READ_STEPS
    for kind in demo.KINDS:
        for when in ("init", "trained"):
            g = grads[kind][when]
            assert len(g) == T
            assert all(math.isfinite(v) and v >= 0 for v in g)
        # The readout spans the last steps: the loss gradient reaches them.
        assert grads[kind]["init"][-1] > 0


def test_demo_writes_what_it_printed(tiny_run):
    out, results, curves, _, table = tiny_run
    with open(out / "demo_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["delay"]) for r in rows] == [0, 4]
    for row, ref in zip(rows, table):
        for kind in demo.KINDS:
            assert float(row[f"{kind}_mean"]) == pytest.approx(ref[f"{kind}_mean"])
    with open(out / "demo_accuracy.csv") as f:
        assert len(list(csv.DictReader(f))) == len(results) == 2 * 2
    with open(out / "demo_curves.csv") as f:
        assert len(list(csv.DictReader(f))) == len(curves) == 2 * 2     # updates 25 and 50
    with open(out / "demo_gradients.csv") as f:
        assert len(list(csv.DictReader(f))) == demo.CUE_STEPS + 4 + demo.READ_STEPS
    assert (out / "demo.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_calibration_gives_both_neurons_the_same_initial_rate():
    prototypes = demo.make_prototypes(torch.Generator().manual_seed(0))
    x, _ = demo.make_data(64, 16, torch.Generator().manual_seed(1), prototypes)
    cal = {k: demo.calibrate_gain(k, 0, x) for k in demo.KINDS}
    for kind, (gain, rate) in cal.items():
        assert 1.0 < gain < 32.0, (kind, gain)
        assert rate == pytest.approx(demo.TARGET_RATE, rel=0.25), (kind, rate)
    # At the same scale CLIF's extra reset makes it fire less, so it needs the larger scale.
    assert cal["clif"][0] > cal["lif"][0]


def test_demo_command_keeps_its_time_budget(tmp_path, capsys):
    start = time.time()
    assert cli.main(["demo", "--seconds", "2", "--seeds", "1", "--delays", "0",
                     "--out", str(tmp_path)]) == 0
    # Start-up, one last update and evaluation and the plot may run past the budget; not by much.
    assert time.time() - start < 2 + 15
    assert "delay" in capsys.readouterr().out
    with open(tmp_path / "demo_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["neuron"] for r in rows} == set(demo.KINDS)
    assert all(int(r["updates"]) >= 1 for r in rows)


def test_demo_rejects_bad_arguments():
    for argv in (["--seconds", "0"], ["--seeds", "0"], ["--delays", "a,b"], ["--delays", "-1"],
                 ["--tau", "1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", *argv])
        assert e.value.code == 2, argv
