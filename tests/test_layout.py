"""The package's structure: what `import clif_kernels` loads, the op's one definition in Python
agreeing with the C++ schemas and constants, and the runtime working without Triton."""
import os
import re
import subprocess
import sys

import pytest
import torch

from clif_kernels import backends, ops
from clif_kernels.options import CKPT_EVERY, SURROGATES, make_options, n_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = {"clif_kernels", "clif_kernels._version", "clif_kernels.backends", "clif_kernels.extension",
           "clif_kernels.functional", "clif_kernels.modules", "clif_kernels.ops",
           "clif_kernels.options", "clif_kernels.reference", "clif_kernels.convert"}


def _python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, **env))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_import_loads_runtime_modules_only():
    out = _python("import clif_kernels, sys; print(sorted(m for m in sys.modules if "
                  "m.startswith(('clif_kernels', 'triton', 'matplotlib', 'spikingjelly'))))")
    loaded = set(eval(out))
    assert loaded <= RUNTIME, f"imported beyond the runtime: {sorted(loaded - RUNTIME)}"


def test_surrogate_ids_agree():
    """options.SURROGATES and csrc/clif_core.h's enum Surrogate: the same names, the same ids,
    and the compiled op takes exactly that many."""
    with open(os.path.join(ROOT, "csrc", "clif_core.h")) as f:
        text = f.read()
    body = re.search(r"enum Surrogate : int \{(.*?)\};", text, re.S).group(1)
    enum = {re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower(): int(value)
            for name, value in re.findall(r"k(\w+) = (\d+)", body)}
    assert enum.pop("num_surrogates") == len(SURROGATES)
    assert enum == SURROGATES
    pair = _compiled_pair()
    x = torch.zeros(2, 3)

    def options(sid):
        return ops.fused_options(make_options(), True)._replace(surrogate=sid)

    last = len(SURROGATES) - 1
    ckpt = pair.fwd(x, None, None, *options(last), True)[3]
    pair.bwd(x, None, None, ckpt, x, None, None, *options(last))
    with pytest.raises(RuntimeError, match="surrogate must be"):
        pair.fwd(x, None, None, *options(last + 1), True)


def _compiled_pair():
    if backends.unavailable_reason("cpp", torch.device("cpu"), torch.float32) is not None:
        pytest.skip("the C++ extension is not built")
    return backends.REGISTRY["cpp"].op_pair()


def test_cpp_implements_the_python_schema():
    """The schemas are declared once, in Python; the C++ entry points take the options of
    csrc/clif_host.h's CLIF_OP_OPTIONS, whose names and order must be the ops' (the dispatcher
    checks the types and the order, not the names)."""
    pair = _compiled_pair()
    for op, schema in ((pair.fwd, ops.FWD_SCHEMA), (pair.bwd, ops.BWD_SCHEMA)):
        declared = str(op._schema)
        assert declared[declared.index("("):] == schema
    with open(os.path.join(ROOT, "csrc", "clif_host.h")) as f:
        text = f.read()
    body = re.search(r"#define CLIF_OP_OPTIONS\(X\)(.*?)\n\n", text, re.S).group(1)
    cpp = re.findall(r"X\(([\w:<>]+), (\w+)\)", body)
    types = {"double": "float", "c10::optional<double>": "float?", "bool": "bool",
             "int64_t": "int"}
    assert [(types[t], n) for t, n in cpp] == [(schema, name) for name, schema, op in ops.OP_ARGS
                                               if op == ("fwd", "bwd")]


def test_dispatcher_refuses_a_cpp_signature_other_than_the_schema():
    """What makes the Python schema the one definition: a C++ implementation whose parameter
    list differs from it does not load (here the schema changed, as if an option had been
    added in Python only)."""
    _compiled_pair()
    out = subprocess.run([sys.executable, "-c", """
import torch
from clif_kernels import extension, ops
assert extension.load()["cpp"]  # the C++ implementations register first, as the backend does
ops.FWD_SCHEMA = ops.FWD_SCHEMA.replace("bool save", "bool save, bool extra")
try:
    ops.define_schemas("clif_fused")
except Exception as e:
    print("refused:", type(e).__name__, str(e).splitlines()[0][:300])
else:
    print("defined")
"""], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr


def test_python_and_cpp_checkpoint_constants_agree():
    """csrc/clif_core.h's kCkptEvery and n_checkpoints against options.CKPT_EVERY and
    n_checkpoints: the checkpoint tensor the C++ forward allocates for each T."""
    pair = _compiled_pair()
    opts = ops.fused_options(make_options(), True)
    for T in range(0, 5 * CKPT_EVERY + 2):
        ckpt = pair.fwd(torch.zeros(T, 3), None, None, *opts, True)[3]
        assert ckpt.shape == (n_checkpoints(T), 2, 3), T
    # The segment length itself: the first checkpoint appears at T = CKPT_EVERY + 1.
    assert n_checkpoints(CKPT_EVERY) == 0 and n_checkpoints(CKPT_EVERY + 1) == 1


# Makes `import triton` fail, as on a machine without it.
_NO_TRITON = "import sys; sys.modules['triton'] = None\n"


def test_cpp_and_reference_backends_work_without_triton():
    _compiled_pair()
    out = _python(_NO_TRITON + """
import sys, torch, clif_kernels
from clif_kernels import backends
x = torch.randn(9, 70, requires_grad=True)
for name in ("cpp", "reference", "auto"):
    s, vT, mT = clif_kernels.clif(x, backend=name, return_state=True)
    (s.sum() + vT.sum() + mT.sum()).backward()
    print(name, float(s.sum()), float(x.grad.norm()))
    x.grad = None
print("triton:", backends.unavailable_reason("triton", torch.device("cpu"), torch.float32))
print("loaded", any(m.startswith("triton") for m in sys.modules if sys.modules[m] is not None))
""", TRITON_INTERPRET="1")
    lines = out.splitlines()
    spikes = {line.split()[0]: float(line.split()[1]) for line in lines[:3]}
    norms = {line.split()[0]: float(line.split()[2]) for line in lines[:3]}
    assert spikes["cpp"] == spikes["reference"] == spikes["auto"], out
    assert norms["cpp"] == norms["auto"] == pytest.approx(norms["reference"], rel=1e-5), out
    assert "not installed" in lines[3], out
    assert lines[4] == "loaded False", out


def test_tests_without_triton_pass():
    """The test modules that need no Triton pass with Triton unimportable."""
    _compiled_pair()
    code = _NO_TRITON + (
        "import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
        "'tests/test_inputs.py', 'tests/test_reference.py', 'tests/test_fused.py', "
        "'-k', 'not triton and not compile']))")
    out = _python(code, TRITON_INTERPRET="1")
    assert " passed" in out and "failed" not in out, out


def test_a_call_argument_default_reaches_the_schema(monkeypatch):
    """A per-call argument declared with a default (options.CALL_ARGS' optional fourth entry)
    carries it in the schema, so that calls may leave it out."""
    assert ops._schema_args("fwd").endswith("bool save, bool store_state=True")
    monkeypatch.setattr(ops, "OP_DEFAULTS", {"save": False, "store_state": True})
    assert ops._schema_args("fwd").endswith(
        "bool is_clif, bool save=False, bool store_state=True")
    assert "save" not in ops._schema_args("bwd")
