// Autograd of the clif_fused ops, in C++: the one entrance for eager calls and torch.compile
// (which traces through it as through any ATen op with a C++ derivative). A Python autograd
// layer (an autograd.Function, or torch.library.register_autograd) costs a Python backward node
// and its argument handling on every call, more than the kernels of a small layer
// (benchmarks/NOTES.md, "Host cost per call"). The formula is ops._backward's (the Triton
// library's, in Python): the fused backward for first-order gradients, the fold's per-channel
// gradients by the op `fold_grads`, and with create_graph the op `bwd_reference` (both
// Python, CompositeImplicitAutograd: ops._fold_grads, and autograd through the reference).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "clif_host.h"

namespace clif {
namespace {

using torch::autograd::variable_list;

// The ops' signatures, from the option list (clif_host.h), so that they follow the schema.
#define CLIF_OPTION_TYPE(type, name) , type
#define CLIF_OPTION_ARG(type, name) , o.name
#define CLIF_FOLD_TYPES const OptTensor&, const OptTensor&, const OptTensor&, int64_t
using FwdSig = FwdResult(const Tensor&, const OptTensor&,
                         const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE), bool, bool,
                         CLIF_FOLD_TYPES);
using BwdSig = BwdResult(const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                         const OptTensor&, const OptTensor&,
                         const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE), CLIF_FOLD_TYPES);
using RefSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor& CLIF_OP_OPTIONS(CLIF_OPTION_TYPE), CLIF_FOLD_TYPES);
using FoldGradsSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                        const Tensor&, int64_t);

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
const c10::TypedOperatorHandle<FoldGradsSig>& fold_grads_handle() {
  static const auto h = handle<FoldGradsSig>("clif_fused::fold_grads");
  return h;
}

Tensor unless_empty(const Tensor& t) { return t.numel() ? t : Tensor(); }

}  // namespace

// The forward's backward node, written as ATen's generated ones are (no
// torch::autograd::Function): its generic node cost more than the kernels of a small layer on
// every call (a dictionary of saved values, a type name demangled per backward, a mutex). Its
// name is what profiles show. Next edges: x, v0, m0, scale, shift, residual.
struct FusedNeuronBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable x_, v0_, m0_, ckpt_, scale_, shift_, residual_;
  OpOptions o_{};
  int64_t inner_ = 1;
  bool has_v0_ = false, has_m0_ = false, has_scale_ = false, has_residual_ = false;

  std::string name() const override { return "FusedNeuronBackward"; }

  void release_variables() override {
    for (auto* v : {&x_, &v0_, &m0_, &ckpt_, &scale_, &shift_, &residual_}) v->reset_data();
  }

  OptTensor saved(const torch::autograd::SavedVariable& v, bool has) {
    return has ? OptTensor(v.unpack()) : c10::nullopt;
  }

  // grads: one per output with history (spikes, vT, mT); returns one per next edge.
  variable_list apply(variable_list&& grads) override {
    const OpOptions& o = o_;
    const Tensor x = x_.unpack();
    const OptTensor v0 = saved(v0_, has_v0_), m0 = saved(m0_, has_m0_);
    const OptTensor scale = saved(scale_, has_scale_), shift = saved(shift_, has_scale_);
    const OptTensor residual = saved(residual_, has_residual_);
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
    variable_list out(6);
    if (at::GradMode::is_enabled()) {  // create_graph: a differentiable backward
      auto r = ref_handle().call(x, v0, m0, gs, gvT, gmT CLIF_OP_OPTIONS(CLIF_OPTION_ARG),
                                 scale, shift, residual, inner_);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r),
             std::get<5>(r)};
      for (size_t i = 1; i < out.size(); ++i) out[i] = unless_empty(out[i]);
    } else {
      BwdResult r;
      {
        at::AutoDispatchBelowADInplaceOrView below;
        r = bwd_handle().call(x, v0, m0, ckpt_.unpack(), gs, gvT,
                              gmT CLIF_OP_OPTIONS(CLIF_OPTION_ARG), scale, shift, residual,
                              inner_);
      }
      // With the fold, the kernel's first gradient is that of the neuron's input u.
      const Tensor& gu = std::get<0>(r);
      if (has_scale_) {
        std::tie(out[0], out[3], out[4]) = fold_grads_handle().call(gu, x, *scale, inner_);
      } else {
        out[0] = gu;
      }
      if (has_residual_) out[5] = gu;
      out[1] = std::get<1>(r);
      out[2] = std::get<2>(r);
    }
    if (!has_v0_) out[1] = Tensor();
    if (!(has_m0_ && o.is_clif)) out[2] = Tensor();
    return out;
  }
};

namespace {

// torch before 2.10 holds autograd nodes in std::shared_ptr, later in c10::intrusive_ptr.
using NodePtr = std::decay_t<decltype(std::declval<const at::TensorBase&>().grad_fn())>;
template <typename N, typename P = NodePtr>
auto make_node() {
  if constexpr (std::is_same_v<P, std::shared_ptr<torch::autograd::Node>>) {
    return std::shared_ptr<N>(new N());
  } else {
    return c10::make_intrusive<N>();
  }
}

FwdResult fwd_autograd(const Tensor& x, const OptTensor& v0,
                       const OptTensor& m0 CLIF_OP_OPTIONS(CLIF_OPTION_PARAM), bool save,
                       bool store_state, CLIF_FOLD_PARAMS) {
  const OpOptions o{CLIF_OP_OPTIONS(CLIF_OPTION_INIT)};
  const Tensor none;
  const Tensor& v0t = v0.has_value() ? *v0 : none;
  const Tensor& m0t = m0.has_value() ? *m0 : none;
  const Tensor& scale_t = scale.has_value() ? *scale : none;
  const Tensor& shift_t = shift.has_value() ? *shift : none;
  const Tensor& residual_t = residual.has_value() ? *residual : none;
  if (!torch::autograd::compute_requires_grad(x, v0t, m0t, scale_t, shift_t, residual_t)) {
    // No graph to record.
    at::AutoDispatchBelowADInplaceOrView below;
    return fwd_handle().call(x, v0, m0 CLIF_OP_OPTIONS(CLIF_OPTION_ARG), save, store_state,
                             scale, shift, residual, inner);
  }
  auto grad_fn = make_node<FusedNeuronBackward>();
  grad_fn->set_next_edges(
      torch::autograd::collect_next_edges(x, v0t, m0t, scale_t, shift_t, residual_t));
  FwdResult out;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    out = fwd_handle().call(x, v0, m0 CLIF_OP_OPTIONS(CLIF_OPTION_ARG), save, store_state,
                            scale, shift, residual, inner);
  }
  // The outputs with a gradient, in the order of apply's grads; the checkpoints have none.
  Tensor spikes = std::get<0>(out), vT = std::get<1>(out), mT = std::get<2>(out);
  torch::autograd::set_history(spikes, grad_fn);
  torch::autograd::set_history(vT, grad_fn);
  torch::autograd::set_history(mT, grad_fn);
  using torch::autograd::SavedVariable;
  grad_fn->x_ = SavedVariable(x, false);
  grad_fn->v0_ = SavedVariable(v0t, false);
  grad_fn->m0_ = SavedVariable(m0t, false);
  grad_fn->ckpt_ = SavedVariable(std::get<3>(out), false);
  grad_fn->scale_ = SavedVariable(scale_t, false);
  grad_fn->shift_ = SavedVariable(shift_t, false);
  grad_fn->residual_ = SavedVariable(residual_t, false);
  grad_fn->o_ = o;
  grad_fn->inner_ = inner;
  grad_fn->has_v0_ = v0.has_value();
  grad_fn->has_m0_ = m0.has_value();
  grad_fn->has_scale_ = scale.has_value();
  grad_fn->has_residual_ = residual.has_value();
  return {spikes, vT, mT, std::get<3>(out)};
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
