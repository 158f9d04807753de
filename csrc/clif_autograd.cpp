// Autograd of the clif_fused ops, in C++: the one entrance for eager calls and torch.compile
// (which traces through it as through any ATen op with a C++ derivative). A Python autograd
// layer (an autograd.Function, or torch.library.register_autograd) costs a Python backward node
// and its argument handling on every call, more than the kernels of a small layer
// (benchmarks/NOTES.md, "Host cost per call"). The formula is ops._backward's (the Triton
// library's, in Python): the fused backward for first-order gradients; with create_graph, the
// op `bwd_reference` (Python, CompositeImplicitAutograd: autograd through the reference).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "clif_host.h"

namespace clif {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The ops' signatures, from the option list (clif_host.h), so that they follow the schema.
#define CLIF_OPTION_TYPE(type, name) , type
#define CLIF_OPTION_ARG(type, name) , o.name
using FwdSig = FwdResult(const Tensor&, const OptTensor&,
                         const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE), bool, bool);
using BwdSig = BwdResult(const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                         const OptTensor&, const OptTensor&,
                         const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE));
using RefSig = BwdResult(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                         const OptTensor&, const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE));

// Looked up on first use: the schemas are declared in Python (clif_kernels/ops.py) after this
// library loads.
template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
const c10::TypedOperatorHandle<FwdSig>& fwd_handle() {
  static const auto h = handle<FwdSig>("clif_fused::fwd");
  return h;
}
const c10::TypedOperatorHandle<BwdSig>& bwd_handle() {
  static const auto h = handle<BwdSig>("clif_fused::bwd");
  return h;
}
const c10::TypedOperatorHandle<RefSig>& ref_handle() {
  static const auto h = handle<RefSig>("clif_fused::bwd_reference");
  return h;
}

OptTensor present(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

}  // namespace

// Outside the anonymous namespace: its name is the backward node's, which profiles show
// ("torch::autograd::CppNode<clif::NeuronFunction>").
struct NeuronFunction : public torch::autograd::Function<NeuronFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& v0,
                               const OptTensor& m0, const OpOptions& o, bool save,
                               bool store_state) {
    at::AutoDispatchBelowADInplaceOrView below;
    FwdResult out = fwd_handle().call(x, v0, m0 CLIF_OP_OPTIONS(CLIF_OPTION_ARG), save,
                                      store_state);
    ctx->save_for_backward({x, v0.value_or(Tensor()), m0.value_or(Tensor()), std::get<3>(out)});
#define CLIF_SAVE_OPTION(type, name) ctx->saved_data[#name] = o.name;
    CLIF_OP_OPTIONS(CLIF_SAVE_OPTION)
#undef CLIF_SAVE_OPTION
    // Unused outputs (vT, mT) then arrive undefined and the kernel skips their loads.
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({std::get<3>(out)});
    return {std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const OptTensor v0 = present(saved[1]), m0 = present(saved[2]);
    OpOptions o;
#define CLIF_LOAD_OPTION(type, name) o.name = ctx->saved_data.at(#name).to<type>();
    CLIF_OP_OPTIONS(CLIF_LOAD_OPTION)
#undef CLIF_LOAD_OPTION
    // A state the forward did not store ([0]) gets no gradient (zeros of size 0 under AOT
    // autograd); neither does LIF's empty mT. Symbolic sizes: torch.compile traces this.
    const c10::SymIntArrayRef state = x.sym_sizes().slice(1);
    auto state_grad = [&](const Tensor& g, bool wanted) -> OptTensor {
      if (!wanted || !g.defined() || g.sym_sizes() != state) return c10::nullopt;
      return g.contiguous();
    };
    const OptTensor gs = grads[0].defined() ? OptTensor(grads[0].contiguous()) : c10::nullopt;
    const OptTensor gvT = state_grad(grads[1], true);
    const OptTensor gmT = state_grad(grads[2], o.is_clif);
    BwdResult r;
    if (at::GradMode::is_enabled()) {  // create_graph: a differentiable backward
      r = ref_handle().call(x, v0, m0, gs, gvT, gmT CLIF_OP_OPTIONS(CLIF_OPTION_ARG));
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      r = bwd_handle().call(x, v0, m0, saved[3], gs, gvT, gmT CLIF_OP_OPTIONS(CLIF_OPTION_ARG));
    }
    // One gradient per argument of forward: x, v0, m0, then the options, save, store_state.
    variable_list out(6);
    out[0] = std::get<0>(r);
    if (v0.has_value()) out[1] = std::get<1>(r);
    if (m0.has_value() && o.is_clif) out[2] = std::get<2>(r);
    return out;
  }
};

namespace {

FwdResult fwd_autograd(const Tensor& x, const OptTensor& v0,
                       const OptTensor& m0 CLIF_OP_OPTIONS(CLIF_OPTION_PARAM), bool save,
                       bool store_state) {
  const OpOptions o{CLIF_OP_OPTIONS(CLIF_OPTION_INIT)};
  variable_list out = NeuronFunction::apply(x, v0, m0, o, save, store_state);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace
}  // namespace clif

TORCH_LIBRARY_IMPL(clif_fused, Autograd, m) {
  m.impl("fwd", &clif::fwd_autograd);
  // The backward op has no derivative of its own (a double backward goes through
  // bwd_reference): backpropagating through it is an error that names the op, not a silent
  // zero.
  m.impl("bwd", torch::autograd::autogradNotImplementedFallback());
}
