// CUDA epilogue kernels of the IBQ driver (ibq.cpp), math in docs/ibq.md. The GEMMs are the
// driver's (cuBLAS: bf16/fp16 operands with float32 logits). Every kernel takes one logits slab
// (N rows x kt codes, accumulation dtype, contiguous): one thread block owns one row; its
// threads stride over the row's codes, so per-row state (running max / argmax / sums) is
// reduced inside the block with warp shuffles and updated by thread 0, with no atomics.
// Probabilities and d(logits) are written in the GEMM operand dtype (the input's), like flash
// attention's P. A fully fused tensor-core kernel that never writes the slab is a later step.
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/static_switch.h"
#include "common/tensor_access.h"
#include "ibq/ibq.h"

namespace dcae_ext {
namespace {

constexpr int kRowThreads = 256;
constexpr int kWarps = kRowThreads / 32;

// torch.argmax's order: NaN above every number, then ties -> the lower index.
template <typename T>
__device__ __forceinline__ bool argmax_better(T value, int64_t arg, T best, int64_t best_arg) {
  if (isnan(value)) return !isnan(best) || arg < best_arg;
  if (isnan(best)) return false;
  return value > best || (value == best && arg < best_arg);
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kWarps; ++w) total += shared[w];
  return total;
}

// Block-wide (max, argmax) in argmax_better's order; every thread gets the result.
template <typename T>
__device__ __forceinline__ void block_argmax(T& value, int64_t& arg, T* shared_value, int64_t* shared_arg) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t other_arg = __shfl_xor_sync(0xffffffffu, arg, offset);
    if (argmax_better(other, other_arg, value, arg)) {
      value = other;
      arg = other_arg;
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    shared_value[warp] = value;
    shared_arg[warp] = arg;
  }
  __syncthreads();
  value = shared_value[0];
  arg = shared_arg[0];
  for (int w = 1; w < kWarps; ++w) {
    if (argmax_better(shared_value[w], shared_arg[w], value, arg)) {
      value = shared_value[w];
      arg = shared_arg[w];
    }
  }
}

// (value, code) comes before (other, other_code) in the candidates' order: value desc, code asc.
template <typename acc>
__device__ __forceinline__ bool ranks_before(acc value, int64_t code, acc other, int64_t other_code) {
  return value > other || (value == other && code < other_code);
}

// A thread's own candidates (IbqScanArgs), sorted by ranks_before; empty slots: (-inf, -1).
// Inserts (x, k) when it ranks before the last one (NaN never does) and says whether it did.
// The loops are unrolled so the lists stay in registers.
template <typename acc>
__device__ __forceinline__ bool insert_candidate(acc (&value)[kIbqCandidates], int64_t (&code)[kIbqCandidates],
                                                 acc x, int64_t k) {
  if (!ranks_before(x, k, value[kIbqCandidates - 1], code[kIbqCandidates - 1])) return false;
#pragma unroll
  for (int j = kIbqCandidates - 1; j > 0; --j) {
    // sorted: the entries (x, k) ranks before form a suffix of the list, which moves down one slot
    const bool shift = ranks_before(x, k, value[j - 1], code[j - 1]);
    const bool place = !shift && ranks_before(x, k, value[j], code[j]);
    value[j] = shift ? value[j - 1] : (place ? x : value[j]);
    code[j] = shift ? code[j - 1] : (place ? k : code[j]);
  }
  if (ranks_before(x, k, value[0], code[0])) {
    value[0] = x;
    code[0] = k;
  }
  return true;
}

// Merges every thread's candidates (thread 0 holding the row's list from earlier tiles) into
// the row's list: kIbqCandidates rounds of a block argmax over the heads, the winner's thread
// popping its head. Codes are unique across the threads' lists. Inlined, so that the lists
// stay in registers (a call would pass them through the stack: ptxas_report.py shows 0 bytes).
template <typename acc>
__device__ __forceinline__ void merge_block_candidates(acc (&value)[kIbqCandidates], int64_t (&code)[kIbqCandidates],
                                       acc* __restrict__ row_value, int64_t* __restrict__ row_code,
                                       acc* shared_value, int64_t* shared_arg) {
  for (int round = 0; round < kIbqCandidates; ++round) {
    acc best = value[0];
    int64_t best_code = code[0];
    __syncthreads();  // the shared arrays may still be read by the previous reduction
    block_argmax(best, best_code, shared_value, shared_arg);
    if (threadIdx.x == 0) {
      row_value[round] = best;
      row_code[round] = best_code;
    }
    if (best_code >= 0 && code[0] == best_code) {
#pragma unroll
      for (int j = 0; j < kIbqCandidates - 1; ++j) {
        value[j] = value[j + 1];
        code[j] = code[j + 1];
      }
      value[kIbqCandidates - 1] = -std::numeric_limits<acc>::infinity();
      code[kIbqCandidates - 1] = -1;
    }
  }
}

// `probs` may alias `logits` (each element is read, then written once by the same thread), so
// neither is __restrict__. kCandidates (cand_value given): the per-thread candidate lists, whose
// registers the plain scan should not carry (85-88 per thread with them: 2 blocks per SM).
template <typename acc, typename out_t, bool kCandidates>
__global__ void scan_kernel(const acc* logits, int64_t kt, int64_t code_offset, acc inv_t,
                            acc* __restrict__ row_max, acc* __restrict__ sum_exp, acc* __restrict__ sum_exp_t,
                            int64_t* __restrict__ idx, out_t* probs, acc* __restrict__ soft,
                            int64_t dim, acc* __restrict__ cand_value, int64_t* __restrict__ cand_code) {
  __shared__ acc shared_value[kWarps];
  __shared__ int64_t shared_arg[kWarps];
  __shared__ acc shared_sum[kWarps];
  const int64_t n = blockIdx.x;
  const acc* row = logits + n * kt;
  const acc neg_inf = -std::numeric_limits<acc>::infinity();
  acc tile_max = neg_inf;
  int64_t tile_arg = kt;  // "none": loses every tie
  for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) {
    const acc x = row[k];
    if (argmax_better(x, k, tile_max, tile_arg)) {
      tile_max = x;
      tile_arg = k;
    }
  }
  block_argmax(tile_max, tile_arg, shared_value, shared_arg);
  if constexpr (kCandidates) {  // every thread takes part in the merge
    acc value[kIbqCandidates];
    int64_t code[kIbqCandidates];
    acc* row_value = cand_value + n * kIbqCandidates;
    int64_t* row_code = cand_code + n * kIbqCandidates;
#pragma unroll
    for (int j = 0; j < kIbqCandidates; ++j) {
      value[j] = threadIdx.x == 0 ? row_value[j] : neg_inf;
      code[j] = threadIdx.x == 0 ? row_code[j] : -1;
    }
    // A code of this tile enters the row's list only above its last value (an equal value has
    // a higher code): that is every thread's threshold, so after the first tiles few insert.
    const acc floor = row_value[kIbqCandidates - 1];
    int inserted = 0;
    for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) {
      const acc x = row[k];
      if (x > floor && insert_candidate(value, code, x, code_offset + k)) inserted = 1;
    }
    if (__syncthreads_or(inserted)) {  // block-uniform; nothing new: the list stands
      merge_block_candidates(value, code, row_value, row_code, shared_value, shared_arg);
    }
  }
  const acc old_max = row_max[n];
  // strict: earlier tiles win ties
  const bool tile_wins = !isnan(old_max) && (isnan(tile_max) || tile_max > old_max);
  const acc new_max = tile_wins ? tile_max : old_max;
  out_t* prob_row = probs != nullptr ? probs + n * kt : nullptr;
  if (new_max == neg_inf) {
    if (prob_row != nullptr)
      for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) prob_row[k] = out_t(0);
    return;
  }
  acc sum = 0, sum_t = 0;
  for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) {
    const acc shifted = row[k] - new_max;
    const acc e = exp(shifted);
    sum += e;
    if (sum_exp_t != nullptr) sum_t += exp(shifted * inv_t);
    if (prob_row != nullptr) prob_row[k] = static_cast<out_t>(e);
  }
  sum = block_sum(sum, shared_sum);
  if (sum_exp_t != nullptr) sum_t = block_sum(sum_t, shared_sum);
  if (threadIdx.x == 0) {
    if (tile_wins) idx[n] = code_offset + tile_arg;
    const acc scale = exp(old_max - new_max);
    sum_exp[n] = sum_exp[n] * scale + sum;
    if (sum_exp_t != nullptr) sum_exp_t[n] = sum_exp_t[n] * exp((old_max - new_max) * inv_t) + sum_t;
    row_max[n] = new_max;
  }
  if (soft != nullptr && tile_wins) {  // otherwise the scale is 1, or NaN on a row that is NaN already
    const acc scale = exp(old_max - new_max);
    for (int64_t j = threadIdx.x; j < dim; j += kRowThreads) soft[n * dim + j] *= scale;
  }
}

template <typename acc, typename out_t>
__global__ void entropy_kernel(acc* __restrict__ logits, int64_t kt, acc inv_t, const acc* __restrict__ stats,
                               acc* __restrict__ row_entropy, out_t* __restrict__ probs) {
  __shared__ acc shared_sum[kWarps];
  const int64_t n = blockIdx.x;
  acc* row = logits + n * kt;
  const acc* st = stats + n * kRowStatCount;
  const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
  out_t* soft_row = probs != nullptr ? probs + n * kt : nullptr;
  acc entropy = 0;
  for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) {
    const acc x = row[k];
    const acc log_p = (x - max) * inv_t - log_sum_t;
    const acc p = exp(log_p);
    if (soft_row != nullptr) soft_row[k] = static_cast<out_t>(exp(x - lse));
    entropy -= p * log_p;
    row[k] = p;
  }
  entropy = block_sum(entropy, shared_sum);
  if (threadIdx.x == 0) row_entropy[n] += entropy;
}

// `out` may alias `logits`, so neither is __restrict__.
template <typename acc, typename out_t, bool kQuantize, bool kEntropy>
__global__ void grad_kernel(const acc* logits, const acc* __restrict__ grad_q, int64_t kt,
                            const acc* __restrict__ stats, const acc* __restrict__ row_dot,
                            const acc* __restrict__ code_coef, const acc* __restrict__ grad_entropy, acc inv_t,
                            acc inv_rows, out_t* out) {
  const int64_t n = blockIdx.x;
  const acc* row = logits + n * kt;
  const acc* st = stats + n * kRowStatCount;
  const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
  const acc row_coef = st[kRowEntropyCoef];
  const acc dot = kQuantize ? row_dot[n] : acc(0);
  const acc entropy_scale = kEntropy ? *grad_entropy * inv_t : acc(0);
  out_t* out_row = out + n * kt;  // may alias `logits` (same element read then written)
  for (int64_t k = threadIdx.x; k < kt; k += kRowThreads) {
    const acc x = row[k];
    acc d = 0;
    if (kQuantize) d = exp(x - lse) * (grad_q[n * kt + k] - dot);
    if (kEntropy) {
      const acc log_p = (x - max) * inv_t - log_sum_t;
      const acc p = exp(log_p);
      d += entropy_scale * p * ((code_coef[k] - log_p) * inv_rows - row_coef);
    }
    out_row[k] = static_cast<out_t>(d);
  }
}

// One block per row: the grid's x dimension holds at most 2^31 - 1 blocks.
unsigned int row_blocks(int64_t rows) {
  DCAE_CHECK_ARG(rows <= std::numeric_limits<int32_t>::max(), "z", rows,
                 " rows exceed the CUDA grid limit of 2^31 - 1 blocks (one per row); split the call");
  return static_cast<unsigned int>(rows);
}

}  // namespace

// The slabs are in the accumulation dtype; dispatch on the GEMM operand dtype (`probs` / `out`).
void ibq_scan_cuda(const IbqScanArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  if (rows == 0) return;
  const unsigned int blocks = row_blocks(rows);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::ScalarType out_type = a.probs.defined() ? a.probs.scalar_type() : a.logits.scalar_type();
  DCAE_DISPATCH_FLOATING(out_type, "ibq_scan_cuda", [&] {
    using acc = acc_t<scalar_t>;
    DCAE_BOOL_SWITCH(a.cand_value.defined(), kCandidates, [&] {
      scan_kernel<acc, scalar_t, kCandidates><<<blocks, kRowThreads, 0, stream>>>(
          a.logits.data_ptr<acc>(), kt, a.code_offset, static_cast<acc>(a.inv_temperature),
          a.row_max.data_ptr<acc>(), a.sum_exp.data_ptr<acc>(), optional_ptr<acc>(a.sum_exp_t),
          a.idx.data_ptr<int64_t>(), optional_ptr<scalar_t>(a.probs), optional_ptr<acc>(a.soft),
          a.soft.defined() ? a.soft.size(1) : 0, optional_ptr<acc>(a.cand_value),
          optional_ptr<int64_t>(a.cand_code));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ibq_entropy_cuda(const IbqEntropyArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  if (rows == 0) return;
  const unsigned int blocks = row_blocks(rows);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::ScalarType out_type = a.probs.defined() ? a.probs.scalar_type() : a.logits.scalar_type();
  DCAE_DISPATCH_FLOATING(out_type, "ibq_entropy_cuda", [&] {
    using acc = acc_t<scalar_t>;
    entropy_kernel<acc, scalar_t><<<blocks, kRowThreads, 0, stream>>>(
        a.logits.data_ptr<acc>(), kt, static_cast<acc>(a.inv_temperature), a.row_stats.data_ptr<acc>(),
        a.row_entropy.data_ptr<acc>(), optional_ptr<scalar_t>(a.probs));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ibq_grad_cuda(const IbqGradArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  if (rows == 0) return;
  const unsigned int blocks = row_blocks(rows);
  const auto stream = at::cuda::getCurrentCUDAStream();
  DCAE_DISPATCH_FLOATING(a.out.scalar_type(), "ibq_grad_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc inv_t = static_cast<acc>(a.inv_temperature);
    const acc inv_rows = acc(1) / static_cast<acc>(a.rows_total);
    DCAE_BOOL_SWITCH(a.grad_logits_q.defined(), kQuantize, [&] {
      DCAE_BOOL_SWITCH(a.grad_entropy.defined(), kEntropy, [&] {
        grad_kernel<acc, scalar_t, kQuantize, kEntropy><<<blocks, kRowThreads, 0, stream>>>(
            a.logits.data_ptr<acc>(), optional_ptr<acc>(a.grad_logits_q), kt, a.row_stats.data_ptr<acc>(),
            optional_ptr<acc>(a.row_dot), optional_ptr<acc>(a.code_coef), optional_ptr<acc>(a.grad_entropy),
            inv_t, inv_rows, a.out.data_ptr<scalar_t>());
      });
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dcae_ext
