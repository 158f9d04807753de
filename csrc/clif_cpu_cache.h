// A small cache of the CPU kernel's large output buffers.
//
// Why: glibc serves an allocation of 32 MiB or more with a fresh mmap and unmaps it when freed,
// so every call of the op wrote its spikes and grad_x into newly mapped pages, and the page
// faults (zeroing each 4 KiB page in the kernel) cost more than the kernel itself
// (benchmarks/NOTES.md). The per-step eager loop's tensors are smaller and come from glibc's heap, which
// reuses them. A training loop asks for the same sizes every step, so a freed output is kept and
// handed to the next request of (nearly) the same size.
//
// Blocks of at least kMinCachedBytes go through the cache; smaller ones to torch's CPU allocator.
// The cache holds at most `limit` bytes of freed blocks (CLIF_KERNELS_CPU_CACHE_MB, default 1024;
// 0 turns it off), dropping the least recently freed first. Tensors made from it are ordinary
// resizable CPU tensors.
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace clif {

constexpr size_t kMinCachedBytes = size_t(1) << 20;

// The process-wide cache (never destroyed: tensors may be freed during interpreter shutdown).
c10::Allocator* cpu_output_cache();
// Bytes of freed blocks the cache holds now.
int64_t cpu_cache_cached_bytes();
// Frees every cached block; returns the bytes released.
int64_t cpu_cache_empty();
// Sets the most it may hold (bytes, >= 0) and trims to it; returns the previous limit.
int64_t cpu_cache_set_limit(int64_t bytes);

}  // namespace clif
