"""Fused Triton kernels: the whole CLIF/LIF recurrence in one launch forward, one launch backward.

Layout: the input is viewed as `[T, N]` (N = neurons = product of the non-time dimensions), row t
contiguous. Each program owns BLOCK neurons and loops over time with `v` and `m` in fp32 registers.

Memory for the backward: the forward saves nothing of its own but a checkpoint of `(v, m)` every
`CKPT_EVERY` steps after the first segment; the backward keeps the input `x` (which autograd holds
anyway as the op's input) and recomputes each segment of CKPT_EVERY steps (for T <= CKPT_EVERY,
the one segment of T steps) before walking it in reverse. For T <= CKPT_EVERY the saved bytes are
exactly those of `x`.

Load order, for a GPU's memory latency: the forward loads step t+1's input before step t's work;
the backward issues all of a segment's x and grad_spikes loads first (pinned there by a data
dependency, see clif_bwd_kernel) and keeps the segment's values as separate register vectors
(no [K, BLOCK] tiles, whose layout changes went through shared memory with barriers). The
previous kernels (loads next to their uses, the tiled backward) stay selectable with
CLIF_KERNELS_GPU_KERNELS=previous until a GPU has timed both.

Naming: `*_kernel` is the Triton kernel, `clif_fwd`/`clif_bwd` the launchers, `b_` a block value,
`p_` a block of pointers.
"""
import math
import os

import torch
import triton
import triton.language as tl

from .options import CKPT_EVERY, charge_constants, n_checkpoints

# Four neurons per thread in the forward: the tuning run on an H200 chose 1024/8 over 1024/4
# (twice as fast for bf16 at T = 32, equal at T = 8; benchmarks/NOTES.md). Eight for 16-bit
# storage, so that each load and store is 16 bytes wide, as in fp32.
FWD_BLOCK, FWD_WARPS = 1024, 8
FWD_BLOCK_16BIT = 2048
# Two neurons per thread in the backward: at four, ptxas gave up to 159 registers (sm_90),
# which caps occupancy at 3 blocks of 128 threads per SM.
BWD_BLOCK, BWD_WARPS = 256, 4
# One neuron per thread in the fold's backward: with the residual's rows loaded in the recompute,
# two spilled on sm_80 (as the CUDA fold backward did at two).
FOLD_BWD_BLOCK = 128


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _neuron_step(b_v, b_m, b_x, gamma, c, b, inv_tau, th, v_reset,
                 HARD_RESET: tl.constexpr, IS_CLIF: tl.constexpr):
    """One step of the spec's forward. The backward calls this same function when it recomputes,
    so both kernels round identically and see the same spikes."""
    b_h = gamma * b_v + c * b_x + b
    b_s = tl.where(b_h >= th, 1.0, 0.0)
    if HARD_RESET:
        b_vn = (1.0 - b_s) * b_h + b_s * v_reset
    else:
        b_vn = b_h - b_s * th
    if IS_CLIF:
        b_a = _sigmoid(b_h * inv_tau)
        b_m = b_m * b_a + b_s
        b_vn = b_vn - b_s * _sigmoid(b_m)
    return b_h, b_s, b_vn, b_m


@triton.jit
def _surrogate_grad(z, alpha, inv_alpha, beta, SURROGATE: tl.constexpr):
    """sigma'(z) for the surrogate with id SURROGATE (options.SURROGATES; spec, Surrogate
    derivatives): a constexpr, so each kernel compiles only its own branch. `inv_alpha` is
    1 / alpha, divided once per program by the caller rather than per step."""
    if SURROGATE == 0:  # rectangle
        g = tl.where(tl.abs(z) <= 0.5 * alpha, inv_alpha, 0.0)
    elif SURROGATE == 1:  # sigmoid
        sg = _sigmoid(alpha * z)
        g = alpha * sg * (1.0 - sg)
    elif SURROGATE == 2:  # atan
        w = 1.5707963267948966 * alpha * z
        g = 0.5 * alpha / (1.0 + w * w)
    elif SURROGATE == 3:  # triangle
        g = tl.maximum(inv_alpha - tl.abs(z) / (alpha * alpha), 0.0)
    elif SURROGATE == 4:  # piecewise_leaky_relu: open window |z| < w = alpha; beta outside
        g = tl.where(tl.abs(z) < alpha, 0.5 * inv_alpha, beta)
    elif SURROGATE == 5:  # piecewise_exp
        g = 0.5 * alpha * tl.exp(-alpha * tl.abs(z))
    elif SURROGATE == 6:  # soft_sign
        q = 1.0 + alpha * tl.abs(z)
        g = 0.5 * alpha / (q * q)
    elif SURROGATE == 7:  # super_spike
        q = 1.0 + tl.abs(z)
        g = alpha / (q * q)
    else:  # erf
        w = alpha * z
        g = 0.5641895835477563 * alpha * tl.exp(-(w * w))
    return g


@triton.jit
def _initial_state(ptr, p_n, mask, value, HAS: tl.constexpr, BLOCK: tl.constexpr):
    if HAS:
        b = tl.load(ptr + p_n, mask=mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros([BLOCK], dtype=tl.float32) + value
    return b


@triton.jit
def _affine_of(scale_ptr, shift_ptr, p_n, mask, inner, C, HAS_SCALE: tl.constexpr):
    """The block's per-neuron scale and shift of the fold (channel (n // inner) % C), loaded
    once per program; 1 and 0 without scale (a residual alone)."""
    if HAS_SCALE:
        ch = (p_n // inner) % C
        b_fs = tl.load(scale_ptr + ch, mask=mask, other=1.0).to(tl.float32)
        b_fb = tl.load(shift_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    else:
        b_fs = tl.full(p_n.shape, 1.0, tl.float32)
        b_fb = tl.zeros(p_n.shape, dtype=tl.float32)
    return b_fs, b_fb


@triton.jit
def _fold(b_x, b_fs, b_fb, res_ptr, t, T, N, p_n, mask, FOLD: tl.constexpr,
          HAS_RES: tl.constexpr, WHOLE: tl.constexpr, BLOCK: tl.constexpr):
    """u = x * scale + shift (+ residual row t): the neuron's input under the fold, the same
    code in the forward and in the backward's recompute. WHOLE: row t exists (see
    _segment_load)."""
    if FOLD:
        b_x = b_x * b_fs + b_fb
        if HAS_RES:
            b_x += _segment_load(res_ptr, t, T, N, p_n, mask, True, WHOLE, BLOCK)
    return b_x


# The kernels are thin entries around their bodies (`_fwd_body`, `_bwd_body`, inlined): the
# default ones take exactly the arguments they took before the fold, whose extra parameters
# changed ptxas's schedule of the default backward; the fold's own kernels take those.

@triton.jit
def clif_fwd_kernel(x_ptr, v0_ptr, m0_ptr, s_ptr, vT_ptr, mT_ptr, ckpt_ptr, T, N,
                    gamma, c, b, inv_tau, th, v_reset, v_init,
                    HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HARD_RESET: tl.constexpr,
                    IS_CLIF: tl.constexpr, SAVE_CKPT: tl.constexpr, STORE_STATE: tl.constexpr,
                    PREFETCH: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    _fwd_body(x_ptr, v0_ptr, m0_ptr, s_ptr, vT_ptr, mT_ptr, ckpt_ptr, T, N,
              gamma, c, b, inv_tau, th, v_reset, v_init, x_ptr, x_ptr, x_ptr, 1, 1,
              HAS_V0, HAS_M0, HARD_RESET, IS_CLIF, SAVE_CKPT, STORE_STATE, PREFETCH, K, BLOCK,
              False, False, False)


@triton.jit
def clif_fold_fwd_kernel(x_ptr, v0_ptr, m0_ptr, s_ptr, vT_ptr, mT_ptr, ckpt_ptr, T, N,
                         gamma, c, b, inv_tau, th, v_reset, v_init,
                         scale_ptr, shift_ptr, res_ptr, inner, C,
                         HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HARD_RESET: tl.constexpr,
                         IS_CLIF: tl.constexpr, SAVE_CKPT: tl.constexpr,
                         STORE_STATE: tl.constexpr, PREFETCH: tl.constexpr, K: tl.constexpr,
                         BLOCK: tl.constexpr, FOLD: tl.constexpr, HAS_SCALE: tl.constexpr,
                         HAS_RES: tl.constexpr):
    _fwd_body(x_ptr, v0_ptr, m0_ptr, s_ptr, vT_ptr, mT_ptr, ckpt_ptr, T, N,
              gamma, c, b, inv_tau, th, v_reset, v_init, scale_ptr, shift_ptr, res_ptr, inner, C,
              HAS_V0, HAS_M0, HARD_RESET, IS_CLIF, SAVE_CKPT, STORE_STATE, PREFETCH, K, BLOCK,
              FOLD, HAS_SCALE, HAS_RES)


@triton.jit
def _fwd_body(x_ptr, v0_ptr, m0_ptr, s_ptr, vT_ptr, mT_ptr, ckpt_ptr, T, N,
              gamma, c, b, inv_tau, th, v_reset, v_init,
              scale_ptr, shift_ptr, res_ptr, inner, C,
              HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HARD_RESET: tl.constexpr,
              IS_CLIF: tl.constexpr, SAVE_CKPT: tl.constexpr, STORE_STATE: tl.constexpr,
              PREFETCH: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
              FOLD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr):
    pid = tl.program_id(0)
    # int64 neuron index: T * N may pass 2^31, and every address below is p_n + t * N.
    p_n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p_n < N
    if FOLD:
        b_fs, b_fb = _affine_of(scale_ptr, shift_ptr, p_n, mask, inner, C, HAS_SCALE)
    else:
        b_fs = tl.zeros([BLOCK], dtype=tl.float32)
        b_fb = b_fs
    b_v = _initial_state(v0_ptr, p_n, mask, v_init, HAS_V0, BLOCK)
    b_m = _initial_state(m0_ptr, p_n, mask, 0.0, HAS_M0, BLOCK)
    p_x = x_ptr + p_n
    p_s = s_ptr + p_n
    p_ck = ckpt_ptr + p_n
    if PREFETCH:
        b_xn = tl.load(p_x, mask=mask & (T > 0), other=0.0).to(tl.float32)
    else:
        b_xn = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, T):
        if SAVE_CKPT:
            if t > 0 and t % K == 0:
                tl.store(p_ck, b_v, mask=mask)
                tl.store(p_ck + N, b_m, mask=mask)
                p_ck += 2 * N
        if PREFETCH:
            b_x = b_xn
            b_xn = tl.load(p_x + N, mask=mask & (t + 1 < T), other=0.0).to(tl.float32)
        else:
            b_x = tl.load(p_x, mask=mask, other=0.0).to(tl.float32)
        b_x = _fold(b_x, b_fs, b_fb, res_ptr, t, T, N, p_n, mask, FOLD, HAS_RES, True, BLOCK)
        b_h, b_s, b_v, b_m = _neuron_step(b_v, b_m, b_x, gamma, c, b, inv_tau, th, v_reset,
                                          HARD_RESET, IS_CLIF)
        tl.store(p_s, b_s.to(s_ptr.dtype.element_ty), mask=mask)
        p_x += N
        p_s += N
    if STORE_STATE:
        tl.store(vT_ptr + p_n, b_v.to(vT_ptr.dtype.element_ty), mask=mask)
        if IS_CLIF:
            tl.store(mT_ptr + p_n, b_m.to(mT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _neuron_step_backward(b_h, b_mp, b_gs, b_gv, b_gm, gamma, c, inv_tau, th, v_reset, alpha,
                          inv_alpha, beta, HARD_RESET: tl.constexpr, IS_CLIF: tl.constexpr,
                          DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr):
    """One step of the spec's backward from h_t and m_{t-1}: returns grad_x_t and the gradients
    of v_{t-1} and m_{t-1} from those of v_t and m_t."""
    b_s = tl.where(b_h >= th, 1.0, 0.0)
    if IS_CLIF:
        b_a = _sigmoid(b_h * inv_tau)
        b_r = _sigmoid(b_mp * b_a + b_s)
        b_gm1 = b_gm - b_gv * b_s * b_r * (1.0 - b_r)
    else:
        b_r = tl.zeros_like(b_h)
        b_gm1 = tl.zeros_like(b_h)
    if DETACH_RESET:
        b_gs1 = b_gs + b_gm1
    else:
        if HARD_RESET:
            b_dvds = v_reset - b_h - b_r
        else:
            b_dvds = -th - b_r
        b_gs1 = b_gs + b_gv * b_dvds + b_gm1
    if HARD_RESET:
        b_gh = b_gv * (1.0 - b_s)
    else:
        b_gh = b_gv
    b_gh += b_gs1 * _surrogate_grad(b_h - th, alpha, inv_alpha, beta, SURROGATE)
    if IS_CLIF:
        b_gh += b_gm1 * b_mp * b_a * (1.0 - b_a) * inv_tau
        b_gm = b_gm1 * b_a
    return c * b_gh, gamma * b_gh, b_gm


@triton.jit
def _segment_load(ptr, t, T, N, p_n, mask, HAS: tl.constexpr, WHOLE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Row t of a [T, N] tensor as fp32 (zeros when absent). Unless the segments are WHOLE, a
    row past T (in a last, partial segment) reads row T - 1 again, whose values the walk never
    uses: a load under the scalar condition t < T became a branch of its own, and ptxas then
    issued each row's load right before its use instead of all of them first."""
    if HAS:
        if WHOLE:
            row = tl.cast(t, tl.int64)
        else:
            row = tl.minimum(t, T - 1).to(tl.int64)
        b = tl.load(ptr + row * N + p_n, mask=mask, other=0.0)
        b = b.to(tl.float32)
    else:
        b = tl.zeros([BLOCK], dtype=tl.float32)
    return b


@triton.jit
def _bits(b):
    """The bits of an fp32 block, as int32."""
    return b.to(tl.int32, bitcast=True)


@triton.jit
def _walk_step(b_h, b_mp, b_gs, b_gv, b_gm, t, T, N, gx_ptr, p_n, mask, gamma, c, inv_tau, th,
               v_reset, alpha, inv_alpha, beta, HARD_RESET: tl.constexpr,
               IS_CLIF: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
               WHOLE: tl.constexpr):
    """Step t of the reverse walk: stores grad_x_t and returns the carried gradients, which
    (unless the segments are WHOLE) stay as they are past T, in the steps of a last, partial
    segment that do not exist."""
    b_gx, b_gv1, b_gm1 = _neuron_step_backward(
        b_h, b_mp, b_gs, b_gv, b_gm, gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
        HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE)
    p_gx = gx_ptr + t.to(tl.int64) * N + p_n
    if WHOLE:
        tl.store(p_gx, b_gx.to(gx_ptr.dtype.element_ty), mask=mask)
        b_gv, b_gm = b_gv1, b_gm1
    else:
        live = t < T
        tl.store(p_gx, b_gx.to(gx_ptr.dtype.element_ty), mask=mask & live)
        b_gv, b_gm = tl.where(live, b_gv1, b_gv), tl.where(live, b_gm1, b_gm)
    return b_gv, b_gm


@triton.jit
def clif_bwd_kernel(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr,
                    gx_ptr, gv0_ptr, gm0_ptr, T, N,
                    gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
                    HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HAS_GS: tl.constexpr,
                    HAS_GVT: tl.constexpr, HAS_GMT: tl.constexpr, HARD_RESET: tl.constexpr,
                    IS_CLIF: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
                    K: tl.constexpr, WHOLE: tl.constexpr, BLOCK: tl.constexpr):
    _bwd_body(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr, gx_ptr, gv0_ptr,
              gm0_ptr, T, N, gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
              x_ptr, x_ptr, x_ptr, 1, 1, HAS_V0, HAS_M0, HAS_GS, HAS_GVT, HAS_GMT, HARD_RESET,
              IS_CLIF, DETACH_RESET, SURROGATE, K, WHOLE, BLOCK, False, False, False)


@triton.jit
def clif_fold_bwd_kernel(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr,
                         gx_ptr, gv0_ptr, gm0_ptr, T, N,
                         gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
                         scale_ptr, shift_ptr, res_ptr, inner, C,
                         HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HAS_GS: tl.constexpr,
                         HAS_GVT: tl.constexpr, HAS_GMT: tl.constexpr,
                         HARD_RESET: tl.constexpr, IS_CLIF: tl.constexpr,
                         DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr, K: tl.constexpr,
                         WHOLE: tl.constexpr, BLOCK: tl.constexpr, FOLD: tl.constexpr,
                         HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr):
    _bwd_body(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr, gx_ptr, gv0_ptr,
              gm0_ptr, T, N, gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
              scale_ptr, shift_ptr, res_ptr, inner, C, HAS_V0, HAS_M0, HAS_GS, HAS_GVT,
              HAS_GMT, HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, K, WHOLE, BLOCK, FOLD,
              HAS_SCALE, HAS_RES)


@triton.jit
def _bwd_body(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr,
              gx_ptr, gv0_ptr, gm0_ptr, T, N,
              gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
              scale_ptr, shift_ptr, res_ptr, inner, C,
              HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HAS_GS: tl.constexpr,
              HAS_GVT: tl.constexpr, HAS_GMT: tl.constexpr, HARD_RESET: tl.constexpr,
              IS_CLIF: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
              K: tl.constexpr, WHOLE: tl.constexpr, BLOCK: tl.constexpr, FOLD: tl.constexpr,
              HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr):
    # The segment is unrolled by hand, one register vector per step and quantity: Triton has no
    # arrays of tensors, and tiles cost layout changes. K (1 to 8) is the segment's length;
    # steps S >= K are compiled out (`if K > S`). WHOLE: K divides T, so no segment reaches
    # past T, and the loop has no clamped rows and no per-step checks against T: fewer
    # instructions and registers (benchmarks/NOTES.md); both kinds of segment compiled into one
    # kernel made ptxas spill. With the fold, the residual rows are loaded in the recompute, at
    # their use (the segment's x and grad_spikes rows already fill the registers).
    pid = tl.program_id(0)
    p_n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p_n < N
    if FOLD:
        b_fs, b_fb = _affine_of(scale_ptr, shift_ptr, p_n, mask, inner, C, HAS_SCALE)
    else:
        b_fs = tl.zeros([BLOCK], dtype=tl.float32)
        b_fb = b_fs
    inv_alpha = 1.0 / alpha
    b_gv = _initial_state(gvT_ptr, p_n, mask, 0.0, HAS_GVT, BLOCK)
    b_gm = _initial_state(gmT_ptr, p_n, mask, 0.0, HAS_GMT, BLOCK)
    zero64 = tl.zeros([BLOCK], dtype=tl.int64)
    n_seg = tl.cdiv(T, K)
    for jj in range(0, n_seg):
        j = n_seg - 1 - jj
        t0 = j * K
        # Every load of the segment first: one wait on memory per segment.
        x0 = _segment_load(x_ptr, t0 + 0, T, N, p_n, mask, True, WHOLE, BLOCK)
        x1 = _segment_load(x_ptr, t0 + 1, T, N, p_n, mask, K > 1, WHOLE, BLOCK)
        x2 = _segment_load(x_ptr, t0 + 2, T, N, p_n, mask, K > 2, WHOLE, BLOCK)
        x3 = _segment_load(x_ptr, t0 + 3, T, N, p_n, mask, K > 3, WHOLE, BLOCK)
        x4 = _segment_load(x_ptr, t0 + 4, T, N, p_n, mask, K > 4, WHOLE, BLOCK)
        x5 = _segment_load(x_ptr, t0 + 5, T, N, p_n, mask, K > 5, WHOLE, BLOCK)
        x6 = _segment_load(x_ptr, t0 + 6, T, N, p_n, mask, K > 6, WHOLE, BLOCK)
        x7 = _segment_load(x_ptr, t0 + 7, T, N, p_n, mask, K > 7, WHOLE, BLOCK)
        g0 = _segment_load(gs_ptr, t0 + 0, T, N, p_n, mask, HAS_GS, WHOLE, BLOCK)
        g1 = _segment_load(gs_ptr, t0 + 1, T, N, p_n, mask, HAS_GS and K > 1, WHOLE, BLOCK)
        g2 = _segment_load(gs_ptr, t0 + 2, T, N, p_n, mask, HAS_GS and K > 2, WHOLE, BLOCK)
        g3 = _segment_load(gs_ptr, t0 + 3, T, N, p_n, mask, HAS_GS and K > 3, WHOLE, BLOCK)
        g4 = _segment_load(gs_ptr, t0 + 4, T, N, p_n, mask, HAS_GS and K > 4, WHOLE, BLOCK)
        g5 = _segment_load(gs_ptr, t0 + 5, T, N, p_n, mask, HAS_GS and K > 5, WHOLE, BLOCK)
        g6 = _segment_load(gs_ptr, t0 + 6, T, N, p_n, mask, HAS_GS and K > 6, WHOLE, BLOCK)
        g7 = _segment_load(gs_ptr, t0 + 7, T, N, p_n, mask, HAS_GS and K > 7, WHOLE, BLOCK)
        # State before the segment: the initial state, or the forward's checkpoint. Both are
        # loaded (each masked off where it is not wanted) and one is selected, so that the loop
        # body stays one basic block; a branch here let ptxas issue the checkpoint's loads after
        # the rows' wait, a second round trip. The cast is a no-op on the fp32 checkpoints; it
        # types the load when T <= K and the launcher passes `x` (any dtype) for the unused
        # pointer.
        first = j == 0
        p_ck = ckpt_ptr + (zero64 + 2 * (j - 1)) * N + p_n
        ck_v = tl.load(p_ck, mask=mask & (j > 0), other=0.0).to(tl.float32)
        ck_m = tl.load(p_ck + N, mask=mask & (j > 0), other=0.0).to(tl.float32)
        b_v = tl.where(first, _initial_state(v0_ptr, p_n, mask & first, v_init, HAS_V0, BLOCK),
                       ck_v)
        b_m = tl.where(first, _initial_state(m0_ptr, p_n, mask & first, 0.0, HAS_M0, BLOCK),
                       ck_m)
        # Pin the load order: ptxas moves each row's load next to its first use (one round
        # trip to memory per step or two), whatever the source order. x0, which the first step
        # needs, is made to depend on every other value loaded above, through bits that are
        # always zero (N is never negative) but that no compiler can prove zero: all the loads
        # must then be issued before the first step, and the segment waits on memory once.
        # (`T < 0` would not do: inside the loop LLVM knows T >= 1 and folds it away.) The
        # rows of steps compiled out are constant zeros, which drop out of the OR.
        never = tl.where(N < 0, -1, 0)
        dep = _bits(x1) | _bits(x2) | _bits(x3) | _bits(x4) | _bits(x5) | _bits(x6) | _bits(x7)
        dep = dep | _bits(g0) | _bits(g1) | _bits(g2) | _bits(g3) | _bits(g4) | _bits(g5)
        dep = dep | _bits(g6) | _bits(g7) | _bits(b_v) | _bits(b_m)
        x0 = (_bits(x0) | (dep & never)).to(tl.float32, bitcast=True)
        # Recompute h_t and m_{t-1}, all the backward needs (unless WHOLE, steps past T compute
        # on clamped rows and are never read).
        mp0 = b_m
        x0 = _fold(x0, b_fs, b_fb, res_ptr, t0 + 0, T, N, p_n, mask, FOLD, HAS_RES,
                   WHOLE, BLOCK)
        h0, _, b_v, b_m = _neuron_step(b_v, b_m, x0, gamma, c, b, inv_tau, th, v_reset,
                                       HARD_RESET, IS_CLIF)
        if K > 1:
            mp1 = b_m
            x1 = _fold(x1, b_fs, b_fb, res_ptr, t0 + 1, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h1, _, b_v, b_m = _neuron_step(b_v, b_m, x1, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 2:
            mp2 = b_m
            x2 = _fold(x2, b_fs, b_fb, res_ptr, t0 + 2, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h2, _, b_v, b_m = _neuron_step(b_v, b_m, x2, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 3:
            mp3 = b_m
            x3 = _fold(x3, b_fs, b_fb, res_ptr, t0 + 3, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h3, _, b_v, b_m = _neuron_step(b_v, b_m, x3, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 4:
            mp4 = b_m
            x4 = _fold(x4, b_fs, b_fb, res_ptr, t0 + 4, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h4, _, b_v, b_m = _neuron_step(b_v, b_m, x4, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 5:
            mp5 = b_m
            x5 = _fold(x5, b_fs, b_fb, res_ptr, t0 + 5, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h5, _, b_v, b_m = _neuron_step(b_v, b_m, x5, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 6:
            mp6 = b_m
            x6 = _fold(x6, b_fs, b_fb, res_ptr, t0 + 6, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h6, _, b_v, b_m = _neuron_step(b_v, b_m, x6, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        if K > 7:
            mp7 = b_m
            x7 = _fold(x7, b_fs, b_fb, res_ptr, t0 + 7, T, N, p_n, mask, FOLD, HAS_RES,
                       WHOLE, BLOCK)
            h7, _, b_v, b_m = _neuron_step(b_v, b_m, x7, gamma, c, b, inv_tau, th, v_reset,
                                           HARD_RESET, IS_CLIF)
        # Walk the segment backwards (spec, Backward).
        if K > 7:
            b_gv, b_gm = _walk_step(h7, mp7, g7, b_gv, b_gm, t0 + 7, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 6:
            b_gv, b_gm = _walk_step(h6, mp6, g6, b_gv, b_gm, t0 + 6, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 5:
            b_gv, b_gm = _walk_step(h5, mp5, g5, b_gv, b_gm, t0 + 5, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 4:
            b_gv, b_gm = _walk_step(h4, mp4, g4, b_gv, b_gm, t0 + 4, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 3:
            b_gv, b_gm = _walk_step(h3, mp3, g3, b_gv, b_gm, t0 + 3, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 2:
            b_gv, b_gm = _walk_step(h2, mp2, g2, b_gv, b_gm, t0 + 2, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        if K > 1:
            b_gv, b_gm = _walk_step(h1, mp1, g1, b_gv, b_gm, t0 + 1, T, N, gx_ptr, p_n, mask,
                                    gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                    HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
        b_gv, b_gm = _walk_step(h0, mp0, g0, b_gv, b_gm, t0 + 0, T, N, gx_ptr, p_n, mask,
                                gamma, c, inv_tau, th, v_reset, alpha, inv_alpha, beta,
                                HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE, WHOLE)
    if HAS_V0:
        tl.store(gv0_ptr + p_n, b_gv.to(gv0_ptr.dtype.element_ty), mask=mask)
    if HAS_M0:
        tl.store(gm0_ptr + p_n, b_gm.to(gm0_ptr.dtype.element_ty), mask=mask)


@triton.jit
def clif_bwd_tiled_kernel(x_ptr, v0_ptr, m0_ptr, ckpt_ptr, gs_ptr, gvT_ptr, gmT_ptr,
                    gx_ptr, gv0_ptr, gm0_ptr, T, N,
                    gamma, c, b, inv_tau, th, v_reset, v_init, alpha, beta,
                    HAS_V0: tl.constexpr, HAS_M0: tl.constexpr, HAS_GS: tl.constexpr,
                    HAS_GVT: tl.constexpr, HAS_GMT: tl.constexpr, HARD_RESET: tl.constexpr,
                    IS_CLIF: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
                    K: tl.constexpr, BLOCK: tl.constexpr):
    # The previous backward (CLIF_KERNELS_GPU_KERNELS=previous): the segment in [K, BLOCK] tiles.
    pid = tl.program_id(0)
    p_n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p_n < N
    inv_alpha = 1.0 / alpha
    b_gv = _initial_state(gvT_ptr, p_n, mask, 0.0, HAS_GVT, BLOCK)
    b_gm = _initial_state(gmT_ptr, p_n, mask, 0.0, HAS_GMT, BLOCK)
    # Row index of the [K, BLOCK] tiles; each thread holds all K rows of its neurons, so the
    # selects below stay inside a thread.
    rows = tl.arange(0, K)[:, None]
    zero64 = tl.zeros([BLOCK], dtype=tl.int64)
    n_seg = tl.cdiv(T, K)
    for jj in range(0, n_seg):
        j = n_seg - 1 - jj
        t0 = j * K
        # State before the segment: the initial state, or the forward's checkpoint.
        if j == 0:
            b_v = _initial_state(v0_ptr, p_n, mask, v_init, HAS_V0, BLOCK)
            b_m = _initial_state(m0_ptr, p_n, mask, 0.0, HAS_M0, BLOCK)
        else:
            # The cast is a no-op on the fp32 checkpoints; it types this branch as the other
            # one when T <= K and the launcher passes `x` (any dtype) for the unused pointer.
            p_ck = ckpt_ptr + (zero64 + 2 * (j - 1)) * N + p_n
            b_v = tl.load(p_ck, mask=mask, other=0.0).to(tl.float32)
            b_m = tl.load(p_ck + N, mask=mask, other=0.0).to(tl.float32)
        # Recompute h_t and m_{t-1} for the segment: these two are all the backward needs.
        b_H = tl.zeros([K, BLOCK], dtype=tl.float32)
        b_MP = tl.zeros([K, BLOCK], dtype=tl.float32)
        for t in tl.static_range(K):
            if t0 + t < T:
                b_x = tl.load(x_ptr + (zero64 + t0 + t) * N + p_n, mask=mask,
                              other=0.0).to(tl.float32)
                b_MP = tl.where(rows == t, b_m[None, :], b_MP)
                b_h, b_s, b_v, b_m = _neuron_step(b_v, b_m, b_x, gamma, c, b, inv_tau, th,
                                                  v_reset, HARD_RESET, IS_CLIF)
                b_H = tl.where(rows == t, b_h[None, :], b_H)
        # Walk the segment backwards (spec, Backward).
        for tt in tl.static_range(K):
            t = K - 1 - tt
            if t0 + t < T:
                off = (zero64 + t0 + t) * N + p_n
                b_h = tl.sum(tl.where(rows == t, b_H, 0.0), axis=0)
                b_mp = tl.sum(tl.where(rows == t, b_MP, 0.0), axis=0)
                if HAS_GS:
                    b_gs = tl.load(gs_ptr + off, mask=mask, other=0.0).to(tl.float32)
                else:
                    b_gs = tl.zeros([BLOCK], dtype=tl.float32)
                b_gx, b_gv, b_gm = _neuron_step_backward(
                    b_h, b_mp, b_gs, b_gv, b_gm, gamma, c, inv_tau, th, v_reset, alpha,
                    inv_alpha, beta, HARD_RESET, IS_CLIF, DETACH_RESET, SURROGATE)
                tl.store(gx_ptr + off, b_gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if HAS_V0:
        tl.store(gv0_ptr + p_n, b_gv.to(gv0_ptr.dtype.element_ty), mask=mask)
    if HAS_M0:
        tl.store(gm0_ptr + p_n, b_gm.to(gm0_ptr.dtype.element_ty), mask=mask)


# With CLIF_KERNELS_POISON=1 (the tests set it) every output starts as NaN, so an element a
# kernel forgets to write shows up. The C++ ops read the same variable.
POISON = os.environ.get("CLIF_KERNELS_POISON") == "1"


def _empty(shape, dtype, device):
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _scalars(o):
    """The kernels' runtime scalars from `ops.FusedOptions`: gamma, c, b, 1/tau, threshold,
    v_reset, v_init."""
    gamma, c, b = charge_constants(o.tau, o.v_reset, o.decay_input)
    vr = o.v_reset if o.v_reset is not None else 0.0
    return gamma, c, b, 1.0 / o.tau, o.v_threshold, vr, vr


# The backward unrolls a segment by hand, step by step.
assert CKPT_EVERY == 8, "clif_bwd_kernel is written for segments of at most 8 steps"


def bwd_segments(T):
    """(K, WHOLE) of the current backward for T steps: one segment of T steps when T fits in
    one (no checkpoints then, so its length is free), else the forward's checkpoint interval;
    WHOLE when the segments tile T exactly, which compiles the loop without clamps or per-step
    checks against T (T = 0 runs no segment at all). K is a compile-time constant: each T below
    8 compiles a backward of its own on first use."""
    k = min(max(T, 1), CKPT_EVERY)
    return k, T % k == 0


def previous_kernels():
    """Whether CLIF_KERNELS_GPU_KERNELS asks for the previous kernels (the loads next to their
    uses, the tiled backward), kept beside the current ones until a GPU has timed both. Read at
    every launch, so that one process can time both."""
    v = os.environ.get("CLIF_KERNELS_GPU_KERNELS") or "current"
    if v not in ("current", "previous"):
        raise ValueError(f"CLIF_KERNELS_GPU_KERNELS must be 'current' or 'previous', got {v!r}")
    return v == "previous"


def _check_dense(**tensors):
    # The kernels address every tensor as dense rows; a strided one would be read wrongly.
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _fold_launch_args(x, scale, shift, residual, inner):
    """The kernels' fold arguments (pointers, inner, C) and constexprs; `x` stands in for the
    absent tensors."""
    from .ops import check_fold
    check_fold(x, scale, shift, residual, inner)
    fold = scale is not None or residual is not None
    args = (scale if scale is not None else x, shift if shift is not None else x,
            residual if residual is not None else x, inner,
            scale.shape[0] if scale is not None else 1)
    return args, dict(FOLD=fold, HAS_SCALE=scale is not None, HAS_RES=residual is not None)


def clif_fwd(x, v0, m0, o, save, store_state=True, scale=None, shift=None, residual=None,
             inner=1):
    """Launch the forward on `x: [T, *]` (N = prod(*) neurons) with `o: ops.FusedOptions` (and
    the fold's arguments, options.FOLD_ARGS). Returns `(spikes [T, *], vT [*] or [0], mT [*] or [0],
    ckpt [n_checkpoints(T), 2, N] fp32 or [0, 2, N])`."""
    _check_dense(x=x, v0=v0, m0=m0)
    fold_args, fold_flags = _fold_launch_args(x, scale, shift, residual, inner)
    is_clif = o.is_clif
    T, N = x.shape[0], math.prod(x.shape[1:])
    spikes = _empty(x.shape, x.dtype, x.device)
    vT = _empty(x.shape[1:] if store_state else (0,), x.dtype, x.device)
    mT = _empty(x.shape[1:] if is_clif and store_state else (0,), x.dtype, x.device)
    n_ck = n_checkpoints(T) if save else 0
    ckpt = _empty((n_ck, 2, N), torch.float32, x.device)
    if N == 0:
        return spikes, vT, mT, ckpt
    previous = previous_kernels()
    # The fold's forward at four neurons per thread in every dtype: at eight (16-bit storage),
    # their scales, shifts and residual rows spilled on sm_80.
    block = FWD_BLOCK if previous or x.element_size() == 4 or fold_flags["FOLD"] \
        else FWD_BLOCK_16BIT
    grid = (triton.cdiv(N, block),)
    if fold_flags["FOLD"]:
        kernel, extra, extra_args = clif_fold_fwd_kernel, fold_flags, fold_args
    else:
        kernel, extra, extra_args = clif_fwd_kernel, {}, ()
    kernel[grid](
        x, v0 if v0 is not None else x, m0 if m0 is not None else x,
        spikes, vT if store_state else spikes, mT if is_clif and store_state else spikes,
        ckpt if n_ck else x, T, N, *_scalars(o), *extra_args,
        HAS_V0=v0 is not None, HAS_M0=m0 is not None and is_clif,
        HARD_RESET=o.v_reset is not None, IS_CLIF=is_clif, SAVE_CKPT=n_ck > 0,
        STORE_STATE=store_state, PREFETCH=not previous, K=CKPT_EVERY, BLOCK=block,
        num_warps=FWD_WARPS, **extra)
    return spikes, vT, mT, ckpt


def clif_bwd(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, o, scale=None, shift=None,
             residual=None, inner=1):
    """Launch the backward. Gradients that are None count as zero. Returns `(grad_x [T, *],
    grad_v0 [*] or [0], grad_m0 [*] or [0])`; with the fold, grad_x is the gradient of the
    neuron's input u."""
    _check_dense(x=x, v0=v0, m0=m0, ckpt=ckpt, grad_spikes=grad_spikes, grad_vT=grad_vT,
                 grad_mT=grad_mT)
    fold_args, fold_flags = _fold_launch_args(x, scale, shift, residual, inner)
    is_clif = o.is_clif
    T, N = x.shape[0], math.prod(x.shape[1:])
    gx = _empty(x.shape, x.dtype, x.device)
    gv0 = _empty(x.shape[1:] if v0 is not None else (0,), x.dtype, x.device)
    has_m0 = m0 is not None and is_clif
    gm0 = _empty(x.shape[1:] if has_m0 else (0,), x.dtype, x.device)
    if N == 0:
        return gx, gv0, gm0
    block = FOLD_BWD_BLOCK if fold_flags["FOLD"] else BWD_BLOCK
    grid = (triton.cdiv(N, block),)
    # The previous (tiled) backward has no fold: folded calls take the current design's.
    k, whole = bwd_segments(T)
    if fold_flags["FOLD"]:
        kernel, extra, extra_args = clif_fold_bwd_kernel, dict(fold_flags, WHOLE=whole), fold_args
    elif previous_kernels():
        kernel, extra, extra_args = clif_bwd_tiled_kernel, {}, ()
        k = CKPT_EVERY
    else:
        kernel, extra, extra_args = clif_bwd_kernel, dict(WHOLE=whole), ()
    kernel[grid](
        x, v0 if v0 is not None else x, m0 if has_m0 else x, ckpt if ckpt.numel() else x,
        grad_spikes if grad_spikes is not None else x,
        grad_vT if grad_vT is not None else x,
        grad_mT if (grad_mT is not None and is_clif) else x,
        gx, gv0 if v0 is not None else gx, gm0 if has_m0 else gx, T, N,
        *_scalars(o), o.alpha, o.beta, *extra_args,
        HAS_V0=v0 is not None, HAS_M0=has_m0, HAS_GS=grad_spikes is not None,
        HAS_GVT=grad_vT is not None, HAS_GMT=grad_mT is not None and is_clif,
        HARD_RESET=o.v_reset is not None, IS_CLIF=is_clif, DETACH_RESET=o.detach_reset,
        SURROGATE=o.surrogate, K=k, BLOCK=block, num_warps=BWD_WARPS, **extra)
    return gx, gv0, gm0
