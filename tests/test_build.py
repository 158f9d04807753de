"""The build's decision about the CUDA extension (setup.py through build_config.cuda_decision),
and what the package reports about its extensions."""
import pytest

from clif_kernels import build_config, extension


@pytest.mark.parametrize("want,torch_cuda,nvcc,build", [
    (None, "13.0", (13, 0), True),
    (None, "13.0", (13, 1), True),      # minor versions may differ
    (None, "12.4", (13, 0), False),     # the workstation case: another major version
    (None, "12.8", None, False),        # no nvcc
    (None, None, (13, 0), False),       # a CPU build of torch
    ("0", "13.0", (13, 0), False),
    ("1", "13.0", (13, 0), True),
])
def test_cuda_decision(want, torch_cuda, nvcc, build):
    built, why = build_config.cuda_decision(want, torch_cuda, nvcc)
    assert built == build
    assert (why is None) == build
    if torch_cuda == "12.4":
        assert "12.4" in why and "13.0" in why and "major" in why


@pytest.mark.parametrize("torch_cuda,nvcc", [("12.4", (13, 0)), ("12.8", None), (None, (13, 0))])
def test_forced_cuda_build_fails_with_the_reason(torch_cuda, nvcc):
    with pytest.raises(RuntimeError, match="CLIF_KERNELS_BUILD_CUDA=1.*cannot be built"):
        build_config.cuda_decision("1", torch_cuda, nvcc)


def test_skip_reason_reaches_the_backend_message(monkeypatch):
    monkeypatch.setattr(extension, "build_info",
                        lambda: {"cuda_built": False, "cuda_why": "nvcc was not found"})
    assert "the build skipped it: nvcc was not found" in extension.load_failure("cuda")


def test_report_names_both_extensions():
    text = extension.report()
    assert "clif_kernels._C " in text and "clif_kernels._C_cuda " in text


@pytest.mark.parametrize("triton_v,numpy_v,works", [((3, 2), (2, 4), False),
                                                    ((3, 4), (2, 5), False),
                                                    ((3, 4), (2, 3), True),
                                                    ((3, 5), (2, 4), True)])
def test_interpreter_numpy_pairing(monkeypatch, triton_v, numpy_v, works):
    from clif_kernels import backends
    monkeypatch.setattr(backends, "_version",
                        lambda p: {"triton": triton_v, "numpy": numpy_v}[p])
    backends._interpreter_why_not.cache_clear()
    why = backends._interpreter_why_not()
    backends._interpreter_why_not.cache_clear()
    assert (why is None) == works
    if not works:
        assert "numpy<2.4" in why
