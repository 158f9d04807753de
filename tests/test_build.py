"""The build's decision about the CUDA extension (setup.py through build_config.cuda_decision),
and what the package reports about its extensions."""
import pytest

from clif_kernels import backends, build_config, extension


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


# ---------------------------------------------------------------------------------------------
# Loud failure: an extension that is present but does not load


@pytest.fixture
def broken_cpp(monkeypatch, tmp_path):
    """A `clif_kernels._C` that is there but does not import (as one built against another
    torch): a file that is not a library, found first on the package's path. The extension
    module's state starts afresh; everything is restored afterwards."""
    import sys

    import clif_kernels
    suffix = next(s for s in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES
                  if s.endswith(".so"))
    fake = tmp_path / f"_C{suffix}"
    fake.write_bytes(b"not a shared library")
    monkeypatch.setattr(clif_kernels, "__path__", [str(tmp_path)] + list(clif_kernels.__path__))
    monkeypatch.delitem(sys.modules, "clif_kernels._C", raising=False)
    monkeypatch.delitem(sys.modules, "clif_kernels._C_cuda", raising=False)
    monkeypatch.setattr(extension, "_tried", False)
    monkeypatch.setattr(extension, "_loaded", {"cpp": False, "cuda": False})
    monkeypatch.setattr(extension, "load_errors", {})
    monkeypatch.setattr(extension, "broken", {})
    monkeypatch.setattr(backends, "_RESOLVED", {})  # what earlier calls found
    return str(fake)


def test_broken_extension_warns_once_with_file_error_and_fix(broken_cpp):
    import warnings

    import torch

    import clif_kernels
    x = torch.randn(4, 8)
    with pytest.warns(extension.ExtensionLoadWarning) as record:
        spikes = clif_kernels.clif(x)                 # backend="auto" on the CPU
    text = str(record[0].message)
    assert len(record) == 1
    assert broken_cpp in text                         # the file
    assert "failed to load (ImportError" in text      # the error
    assert "--no-build-isolation" in text and "jit_build()" in text   # the fix
    # It still computes, on the reference.
    assert torch.equal(spikes, clif_kernels.clif(x, backend="torch"))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        clif_kernels.clif(x)
    assert not [w for w in again if issubclass(w.category, extension.ExtensionLoadWarning)]
    assert "PRESENT BUT FAILED TO LOAD" in extension.report()


def test_check_fails_when_a_built_extension_does_not_load(broken_cpp, capsys):
    from clif_kernels.tools import check
    with pytest.warns(extension.ExtensionLoadWarning):
        status = check.run_check(steps=1, neurons=2, backends=())
    out = capsys.readouterr().out
    assert status == 1
    assert f"FAIL: _C: {broken_cpp} does not load" in out


def test_auto_on_cuda_warns_once_when_it_ends_on_the_reference(monkeypatch):
    """float64 on a CUDA device: no fused backend takes it (and without a GPU none runs at
    all), so `auto` ends on the reference, and says so once."""
    import warnings

    import torch

    from clif_kernels import backends
    monkeypatch.setattr(extension, "_warned_slow_path", False)
    with pytest.warns(extension.SlowPathWarning, match="pure-PyTorch reference") as record:
        name = backends.resolve_backend("auto", torch.device("cuda"), torch.float64)
    assert backends.REGISTRY[name].devices is None    # the reference
    assert "cuda:" in str(record[0].message) and "triton:" in str(record[0].message)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        backends.resolve_backend("auto", torch.device("cuda"), torch.float64)
    assert not [w for w in again if issubclass(w.category, extension.SlowPathWarning)]
