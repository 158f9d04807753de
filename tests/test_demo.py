"""The CLIF-vs-LIF demo runs end to end on a tiny budget and measures what it reports."""
import math

from clif_kernels.tools import demo


def test_demo_runs_and_measures_gradients(tmp_path):
    history, grads = demo.run(seconds=1.0, out=str(tmp_path))
    assert len(history) >= 1
    assert all(0.0 <= r[f"{k}_acc"] <= 1.0 for r in history for k in ("lif", "clif"))
    for kind in ("lif", "clif"):
        for when in ("init", "trained"):
            g = grads[kind][when]
            assert len(g) == demo.T_STEPS
            assert all(math.isfinite(v) and v >= 0 for v in g)
        # The readout spans the last steps: the loss gradient reaches them.
        assert grads[kind]["init"][-1] > 0
    assert (tmp_path / "demo_history.csv").exists()
    assert (tmp_path / "demo_gradients.csv").exists()
