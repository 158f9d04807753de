// Host-side helpers shared by the CPU and CUDA implementations of the clif_fused ops: input
// checks that name the argument, output allocation, the params struct, and the switch macro that
// turns a runtime flag into a template constant.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/util/Optional.h>
#include <c10/util/accumulate.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>

#include "clif_core.h"

namespace clif {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using FwdResult = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using BwdResult = std::tuple<Tensor, Tensor, Tensor>;

// Runs the lambda with NAME a constexpr bool equal to COND.
#define CLIF_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                   \
    if (COND) {                           \
      constexpr bool NAME = true;         \
      return __VA_ARGS__();               \
    } else {                              \
      constexpr bool NAME = false;        \
      return __VA_ARGS__();               \
    }                                     \
  }()

// Every output is allocated here: from `host_cache` when given (the CPU kernel's output cache,
// clif_cpu_cache.h), else by torch. With CLIF_KERNELS_POISON=1 in the environment (the tests set
// it) outputs start as NaN, so an element a kernel forgets to write shows up.
inline Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& options,
                    c10::Allocator* host_cache) {
  static const bool poison = [] {
    const char* v = std::getenv("CLIF_KERNELS_POISON");
    return v != nullptr && std::string(v) == "1";
  }();
  Tensor t = host_cache ? at::detail::empty_generic(
                              sizes, host_cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                              options.dtype().toScalarType(), c10::nullopt)
                        : at::empty(sizes, options);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline int64_t n_checkpoints(int64_t T) {
  const int64_t segs = (T + kCkptEvery - 1) / kCkptEvery;
  return segs > 1 ? segs - 1 : 0;
}

// Checkpoints keep the compute precision: fp64 for fp64 input, else fp32.
inline at::ScalarType ckpt_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// x is [T, *]: T steps of N = prod(*) neurons, dense; the states are [*].
inline at::IntArrayRef state_shape(const Tensor& x) { return x.sizes().slice(1); }
inline int64_t n_neurons(const Tensor& x) { return c10::multiply_integers(state_shape(x)); }
// [0]: the shape of an output nobody asked for.
inline at::IntArrayRef placeholder_shape() {
  static const int64_t zero = 0;
  return at::IntArrayRef(&zero, 1);
}

inline void check_state(const char* name, const OptTensor& t, const Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->sizes() == state_shape(x), name, " must have shape ", state_shape(x),
              ", got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(),
              ", got ", t->scalar_type());
  TORCH_CHECK(t->device() == x.device(), name, " must be on ", x.device(), ", got ",
              t->device());
  TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
}

inline void check_x(const Tensor& x, c10::DeviceType device) {
  TORCH_CHECK(x.dim() >= 1, "x must be [T, *], got a 0-dimensional tensor");
  TORCH_CHECK(x.device().type() == device, "x must be a ", device, " tensor, got ", x.device());
  TORCH_CHECK(x.is_contiguous(), "x must be contiguous");
}

// The ops' scalar options, X(C++ type, name), in the order of their schema. The schema itself is
// declared once, in Python (clif_kernels/options.py, OP_ARGS): this list is its C++ consumer,
// which the dispatcher checks against it (types and order) when the library loads, and a test
// checks the names. Adding an option: one line here, then its use.
#define CLIF_OP_OPTIONS(X)          \
  X(double, tau)                    \
  X(double, v_threshold)            \
  X(c10::optional<double>, v_reset) \
  X(bool, decay_input)              \
  X(int64_t, surrogate)             \
  X(double, alpha)                  \
  X(double, beta)                   \
  X(bool, detach_reset)             \
  X(bool, is_clif)

struct OpOptions {
#define CLIF_OPTION_MEMBER(type, name) type name;
  CLIF_OP_OPTIONS(CLIF_OPTION_MEMBER)
#undef CLIF_OPTION_MEMBER
};

// The options as parameters of the ops' entry points (", type name" each), and as the
// initialiser of an OpOptions from those parameters ("name," each).
#define CLIF_OPTION_PARAM(type, name) , type name
#define CLIF_OPTION_INIT(type, name) name,

// The fold's arguments, last in both ops (clif_kernels/options.py, FOLD_ARGS): the neuron runs on
// u = x * scale[c] + shift[c] (+ residual), c = (n / inner) % scale.size(0).
struct Fold {
  const OptTensor& scale;
  const OptTensor& shift;
  const OptTensor& residual;
  int64_t inner;
};

// What clif_kernels/ops.py's check_fold checks too (the Triton ops and the fake kernels), with
// the same messages.
inline void check_fold(const Fold& f, const Tensor& x) {
  TORCH_CHECK(f.scale.has_value() == f.shift.has_value(),
              "scale and shift must be given together (the folded map is x * scale + shift)");
  if (f.scale.has_value()) {
    const int64_t C = f.scale->dim() == 1 ? f.scale->size(0) : -1;
    const auto check_one = [&](const char* name, const Tensor& t) {
      TORCH_CHECK(t.dim() == 1 && t.size(0) == C && C >= 1, name,
                  " must be [C] with C >= 1 (shift as long as scale), got ", t.sizes());
      TORCH_CHECK(t.scalar_type() == ckpt_dtype(x), name, " must have dtype ", ckpt_dtype(x),
                  " (the compute dtype of ", x.scalar_type(), " input), got ", t.scalar_type());
      TORCH_CHECK(t.device() == x.device(), name, " must be on ", x.device(), ", got ",
                  t.device());
      TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    };
    check_one("scale", *f.scale);
    check_one("shift", *f.shift);
    TORCH_CHECK(f.inner >= 1, "inner must be >= 1, got ", f.inner);
    TORCH_CHECK(n_neurons(x) % (C * f.inner) == 0, "the channel layout does not match x: N = ",
                n_neurons(x), " neurons is not a multiple of channels (", C, ") x inner (",
                f.inner, ")");
  }
  if (f.residual.has_value()) {
    const Tensor& r = *f.residual;
    TORCH_CHECK(r.sizes() == x.sizes(), "residual must have shape ", x.sizes(), ", got ",
                r.sizes());
    TORCH_CHECK(r.scalar_type() == x.scalar_type(), "residual must have dtype ",
                x.scalar_type(), ", got ", r.scalar_type());
    TORCH_CHECK(r.device() == x.device(), "residual must be on ", x.device(), ", got ",
                r.device());
    TORCH_CHECK(r.is_contiguous(), "residual must be contiguous");
  }
}

inline void check_options(const OpOptions& o) {
  TORCH_CHECK(std::isfinite(o.tau) && o.tau > 0, "tau must be finite and > 0, got ", o.tau);
  TORCH_CHECK(std::isfinite(o.v_threshold), "v_threshold must be finite, got ", o.v_threshold);
  TORCH_CHECK(!o.v_reset.has_value() || std::isfinite(*o.v_reset),
              "v_reset must be finite or None, got ", *o.v_reset);
  TORCH_CHECK(o.surrogate >= 0 && o.surrogate < kNumSurrogates, "surrogate must be 0..",
              kNumSurrogates - 1, ", got ", o.surrogate);
  TORCH_CHECK(std::isfinite(o.alpha) && o.alpha > 0, "alpha must be finite and > 0, got ",
              o.alpha);
  TORCH_CHECK(std::isfinite(o.beta), "beta must be finite, got ", o.beta);
}

// The one place the kernels' constants are derived from the options.
template <typename acc_t>
Params<acc_t> make_params(const OpOptions& o) {
  const bool hard = o.v_reset.has_value();
  const double vr = hard ? *o.v_reset : 0.0;
  Params<acc_t> p{};
  p.gamma = static_cast<acc_t>(1.0 - 1.0 / o.tau);
  p.c = static_cast<acc_t>(o.decay_input ? 1.0 / o.tau : 1.0);
  p.b = static_cast<acc_t>(hard ? vr / o.tau : 0.0);
  p.inv_tau = static_cast<acc_t>(1.0 / o.tau);
  p.th = static_cast<acc_t>(o.v_threshold);
  p.v_reset = static_cast<acc_t>(vr);
  p.v_init = static_cast<acc_t>(vr);
  p.alpha = static_cast<acc_t>(o.alpha);
  p.beta = static_cast<acc_t>(o.beta);
  // In acc_t, as the kernels divided before: the same bits.
  p.inv_alpha = acc_t(1) / p.alpha;
  p.half_inv_alpha = acc_t(0.5) / p.alpha;
  p.surrogate = static_cast<int>(o.surrogate);
  p.hard = hard;
  p.keep_reset = !o.detach_reset;
  p.is_clif = o.is_clif;
  return p;
}

// Checks the forward's inputs and allocates its outputs: spikes [T, *], vT [*], mT [*] (CLIF) or
// [0] (LIF), and the fp32 checkpoints [n_checkpoints(T), 2, N] (or [0, 2, N] without `save`);
// vT and mT are [0] without `store_state`.
inline FwdResult prepare_fwd(const Tensor& x, const OptTensor& v0, const OptTensor& m0,
                             const OpOptions& o, bool save, bool store_state, const Fold& f,
                             c10::DeviceType device, c10::Allocator* host_cache) {
  check_x(x, device);
  check_state("v0", v0, x);
  check_state("m0", m0, x);
  check_options(o);
  check_fold(f, x);
  const int64_t T = x.size(0), N = n_neurons(x);
  // [0]: nobody asked for the final states (or LIF's mT).
  const at::IntArrayRef none = placeholder_shape();
  return {alloc(x.sizes(), x.options(), host_cache),
          alloc(store_state ? state_shape(x) : none, x.options(), host_cache),
          alloc(store_state && o.is_clif ? state_shape(x) : none, x.options(), host_cache),
          alloc({save ? n_checkpoints(T) : 0, 2, N}, x.options().dtype(ckpt_dtype(x)),
                host_cache)};
}

inline void check_grad(const char* name, const OptTensor& g, at::IntArrayRef shape,
                       const Tensor& x) {
  if (!g.has_value()) return;
  TORCH_CHECK(g->sizes() == shape, name, " must have shape ", shape, ", got ", g->sizes());
  TORCH_CHECK(g->scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(),
              ", got ", g->scalar_type());
  TORCH_CHECK(g->device() == x.device(), name, " must be on ", x.device());
  TORCH_CHECK(g->is_contiguous(), name, " must be contiguous");
}

// Checks the backward's inputs and allocates grad_x [T, *], grad_v0 [*] or [0], grad_m0 [*] or
// [0].
inline BwdResult prepare_bwd(const Tensor& x, const OptTensor& v0, const OptTensor& m0,
                             const Tensor& ckpt, const OptTensor& gs, const OptTensor& gvT,
                             const OptTensor& gmT, const OpOptions& o, const Fold& f,
                             c10::DeviceType device, c10::Allocator* host_cache) {
  check_x(x, device);
  check_state("v0", v0, x);
  check_state("m0", m0, x);
  check_options(o);
  check_fold(f, x);
  const int64_t T = x.size(0), N = n_neurons(x);
  check_grad("grad_spikes", gs, x.sizes(), x);
  check_grad("grad_vT", gvT, state_shape(x), x);
  check_grad("grad_mT", gmT, state_shape(x), x);
  const int64_t n_ck = n_checkpoints(T);
  TORCH_CHECK(ckpt.scalar_type() == ckpt_dtype(x) && ckpt.is_contiguous() &&
                  ckpt.device() == x.device() &&
                  ckpt.sizes() == at::IntArrayRef({n_ck, 2, N}),
              "ckpt must be the forward's contiguous ", ckpt_dtype(x), " [", n_ck, ", 2, ", N,
              "] checkpoints, got ", ckpt.sizes());
  const bool has_m0 = m0.has_value() && o.is_clif;
  const at::IntArrayRef none = placeholder_shape();
  return {alloc(x.sizes(), x.options(), host_cache),
          alloc(v0.has_value() ? state_shape(x) : none, x.options(), host_cache),
          alloc(has_m0 ? state_shape(x) : none, x.options(), host_cache)};
}

inline const void* opt_ptr(const OptTensor& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

// Where one launch reads and writes: the inputs both passes share, then each pass's own.
template <typename acc_t>
GroupData<acc_t> common_io(const Tensor& x, const OptTensor& v0, const OptTensor& m0,
                           const Tensor& ckpt, bool is_clif, const Fold& f) {
  GroupData<acc_t> io{};
  io.x = x.data_ptr();
  io.v0 = opt_ptr(v0);
  io.m0 = is_clif ? opt_ptr(m0) : nullptr;
  io.ckpt = ckpt.numel() ? ckpt.data_ptr<acc_t>() : nullptr;
  io.T = x.size(0);
  io.N = n_neurons(x);
  io.scale = f.scale.has_value() ? f.scale->data_ptr<acc_t>() : nullptr;
  io.shift = f.shift.has_value() ? f.shift->data_ptr<acc_t>() : nullptr;
  io.residual = opt_ptr(f.residual);
  io.inner = f.inner;
  io.channels = f.scale.has_value() ? f.scale->size(0) : 1;
  return io;
}

template <typename acc_t>
GroupData<acc_t> fwd_io(const FwdResult& out, const Tensor& x, const OptTensor& v0,
                        const OptTensor& m0, bool is_clif, const Fold& f) {
  auto io = common_io<acc_t>(x, v0, m0, std::get<3>(out), is_clif, f);
  io.spikes = std::get<0>(out).data_ptr();
  // Null when not stored: the kernels then skip those stores.
  io.vT = std::get<1>(out).numel() ? std::get<1>(out).data_ptr() : nullptr;
  io.mT = is_clif && std::get<2>(out).numel() ? std::get<2>(out).data_ptr() : nullptr;
  io.save = std::get<3>(out).numel() > 0;
  return io;
}

template <typename acc_t>
GroupData<acc_t> bwd_io(const BwdResult& out, const Tensor& x, const OptTensor& v0,
                        const OptTensor& m0, const Tensor& ckpt, const OptTensor& gs,
                        const OptTensor& gvT, const OptTensor& gmT, bool is_clif,
                        const Fold& f) {
  auto io = common_io<acc_t>(x, v0, m0, ckpt, is_clif, f);
  io.gs = opt_ptr(gs);
  io.gvT = opt_ptr(gvT);
  io.gmT = is_clif ? opt_ptr(gmT) : nullptr;
  io.gx = std::get<0>(out).data_ptr();
  io.gv0 = v0.has_value() ? std::get<1>(out).data_ptr() : nullptr;
  io.gm0 = std::get<2>(out).numel() ? std::get<2>(out).data_ptr() : nullptr;
  return io;
}

// ---------------------------------------------------------------------------------------------
// The ops' entry points, one per op for every device. Their parameter lists are the schemas'
// (declared in Python: clif_kernels/ops.py), which the dispatcher checks against these. Each device defines
// the three functions below and registers fwd_op<D> and bwd_op<D>.

// Where the device's outputs come from: the CPU's output cache, or torch's allocator (null).
template <c10::DeviceType D>
c10::Allocator* output_allocator();
// Runs the kernels on checked inputs and allocated outputs.
template <c10::DeviceType D>
void run_fwd(const FwdResult& out, const Tensor& x, const OptTensor& v0, const OptTensor& m0,
             const OpOptions& o, const Fold& f);
template <c10::DeviceType D>
void run_bwd(const BwdResult& out, const Tensor& x, const OptTensor& v0, const OptTensor& m0,
             const Tensor& ckpt, const OptTensor& gs, const OptTensor& gvT, const OptTensor& gmT,
             const OpOptions& o, const Fold& f);

// The fold's parameters (FOLD_ARGS), after the options and the forward's own arguments.
#define CLIF_FOLD_PARAMS \
  const OptTensor &scale, const OptTensor &shift, const OptTensor &residual, int64_t inner

template <c10::DeviceType D>
FwdResult fwd_op(const Tensor& x, const OptTensor& v0,
                 const OptTensor& m0 CLIF_OP_OPTIONS(CLIF_OPTION_PARAM), bool save,
                 bool store_state, CLIF_FOLD_PARAMS) {
  const OpOptions o{CLIF_OP_OPTIONS(CLIF_OPTION_INIT)};
  const Fold f{scale, shift, residual, inner};
  FwdResult out = prepare_fwd(x, v0, m0, o, save, store_state, f, D, output_allocator<D>());
  run_fwd<D>(out, x, v0, m0, o, f);
  return out;
}

template <c10::DeviceType D>
BwdResult bwd_op(const Tensor& x, const OptTensor& v0, const OptTensor& m0, const Tensor& ckpt,
                 const OptTensor& gs, const OptTensor& gvT,
                 const OptTensor& gmT CLIF_OP_OPTIONS(CLIF_OPTION_PARAM), CLIF_FOLD_PARAMS) {
  const OpOptions o{CLIF_OP_OPTIONS(CLIF_OPTION_INIT)};
  const Fold f{scale, shift, residual, inner};
  BwdResult out = prepare_bwd(x, v0, m0, ckpt, gs, gvT, gmT, o, f, D, output_allocator<D>());
  run_bwd<D>(out, x, v0, m0, ckpt, gs, gvT, gmT, o, f);
  return out;
}

}  // namespace clif
