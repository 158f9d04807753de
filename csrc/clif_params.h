// What one launch of a fused kernel needs, as plain structs: the recurrence's constants
// (Params) and where the launch reads and writes (GroupData). The host fills both once per call
// (clif_host.h) and every kernel takes them as they are: the CUDA launch, the portable CPU loops
// and the AVX-512 build across its ISA boundary (clif_cpu_isa.h).
//
// Aggregates with no default member initialisers and no member functions: their constructors
// and copies are trivial, so no inline code is emitted for them that the AVX-512 translation
// unit and the baseline one could share (fill them with `T x{}`).
#pragma once

#include <cstdint>

namespace clif {

// The spec's parameters, reduced to the constants the recurrence uses. Options that do not
// change the inner loop's cost stay runtime values (warp-uniform branches on the GPU).
template <typename acc_t>
struct Params {
  acc_t gamma;    // 1 - 1/tau
  acc_t c;        // 1/tau if decay_input else 1
  acc_t b;        // v_reset/tau for a hard reset, else 0
  acc_t inv_tau;
  acc_t th;       // v_threshold
  acc_t v_reset;  // 0 for a soft reset
  acc_t v_init;   // v before step 0 when no v0 is given
  acc_t alpha;    // surrogate width/steepness
  acc_t beta;     // the surrogate's second parameter (piecewise_leaky_relu's c), else 0
  // 1/alpha and 0.5/alpha, divided once here rather than per element in the loops (a
  // division's slow-path check keeps the GPU compiler from hoisting it out of them).
  acc_t inv_alpha;
  acc_t half_inv_alpha;
  int surrogate;    // Surrogate (clif_core.h)
  bool hard;        // a hard reset (to v_reset)
  bool keep_reset;  // false when detach_reset: the reset terms carry no gradient
  bool is_clif;
};

// Where one launch reads and writes, for a [T, N] problem of any storage type: the kernels' IO
// objects (GroupIO in clif_core.h, VecIO in clif_simd.h) cast the pointers to their storage
// type. Null pointers mark what is absent.
template <typename acc_t>
struct GroupData {
  // forward and backward
  const void* x;
  const void* v0;  // may be null
  const void* m0;  // may be null (always for LIF)
  acc_t* ckpt;     // [n_ckpt, 2, N]: fp32, or fp64 for fp64 storage; null when n_ckpt is 0
  // forward
  void* spikes;
  void* vT;
  void* mT;  // null for LIF
  // backward
  const void* gs;   // may be null
  const void* gvT;  // may be null
  const void* gmT;  // may be null
  void* gx;
  void* gv0;  // null when v0 is
  void* gm0;  // null when m0 is
  int64_t T;
  int64_t N;
  bool save;  // the forward stores checkpoints
  // The fold, both passes (clif_kernels/options.py, FOLD_ARGS): the neuron runs on
  // u = x * scale[c] + shift[c] (+ residual), c = (n / inner) % channels for neuron n. All null
  // on the default path, which the drivers branch away from once, before the loop over time.
  const acc_t* scale;     // [channels] or null (then shift is too)
  const acc_t* shift;     // [channels] or null
  const void* residual;   // [T, N] in the storage type, or null
  int64_t inner;          // neurons per channel run (the product of the dims after the channel)
  int64_t channels;
};

}  // namespace clif
