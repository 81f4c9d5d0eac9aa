// CPU epilogues of the IBQ driver (ibq.cpp): at::parallel_for over the rows of a logits slab;
// one thread owns whole rows, so per-row state needs no reduction across threads. GEMMs are
// the driver's (BLAS). On CPU the GEMM operands are the accumulation dtype (bf16/fp16 inputs
// are upcast once, O((N + K) D)), so `probs` / `out` are accumulation-dtype slabs that may
// alias the logits slab: every loop reads an element before it writes the same element.
//
// Each row is swept by `#pragma omp simd` loops without early exits (max, then the first
// index of the max, then the exp sums), calling the branch-free float exp / log of
// ibq_cpu_math.h so that they vectorise; the row functions carry DCAE_SIMD_CLONES (AVX2 /
// AVX-512 versions). A row of one tile (hundreds to thousands of codes) stays in L1/L2
// between the sweeps. The per-row sums are SIMD-lane partial sums.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/checks.h"
#include "ibq/ibq.h"
#include "ibq/ibq_cpu_math.h"

namespace dcae_ext {
namespace {

constexpr int64_t kRowsPerTask = 8;
constexpr int64_t kArgmaxChunk = 64;  // codes tested together for the first maximum

template <typename acc>
acc* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc>() : nullptr;
}

// max_k row[k] in torch.argmax's order: NaN if the row holds one (-inf for an empty row).
template <typename acc>
DCAE_SIMD_CLONES acc row_max_of(const acc* __restrict row, int64_t kt) {
  acc m = -std::numeric_limits<acc>::infinity();
  int has_nan = 0;
#pragma omp simd reduction(max : m) reduction(| : has_nan)
  for (int64_t k = 0; k < kt; ++k) {
    m = row[k] > m ? row[k] : m;
    has_nan |= row[k] != row[k];
  }
  return has_nan ? std::numeric_limits<acc>::quiet_NaN() : m;
}

// First k with row[k] == value, or the first NaN when value is NaN (0 if none): the argmax
// with ties to the lowest code.
template <typename acc>
int64_t first_index_of(const acc* __restrict row, int64_t kt, acc value) {
  const bool find_nan = std::isnan(value);
  for (int64_t k0 = 0; k0 < kt; k0 += kArgmaxChunk) {
    const int64_t k1 = std::min(kt, k0 + kArgmaxChunk);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t k = k0; k < k1; ++k) hit |= (row[k] == value) | (find_nan & (row[k] != row[k]));
    if (hit)
      for (int64_t k = k0; k < k1; ++k)
        if (row[k] == value || (find_nan && std::isnan(row[k]))) return k;
  }
  return 0;
}

// sum_k exp(row[k] - max) [-> sum] and sum_k exp((row[k] - max) / T) [-> sum_t, kTemp];
// exp(row[k] - max) is stored to probs[k] when kProbs (probs may alias row).
template <typename acc, bool kTemp, bool kProbs>
DCAE_SIMD_CLONES void exp_sums(const acc* row, int64_t kt, acc max, acc inv_t, acc* probs, acc& sum,
                               acc& sum_t) {
  acc s = 0, s_t = 0;
#pragma omp simd reduction(+ : s, s_t)
  for (int64_t k = 0; k < kt; ++k) {
    const acc shifted = row[k] - max;
    const acc e = fast_exp(shifted);
    s += e;
    if (kTemp) s_t += fast_exp(shifted * inv_t);
    if (kProbs) probs[k] = e;
  }
  sum = s;
  sum_t = s_t;
}

template <typename acc>
void scan_rows(const IbqScanArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  const acc* logits = a.logits.data_ptr<acc>();
  acc* row_max = a.row_max.data_ptr<acc>();
  acc* sum_exp = a.sum_exp.data_ptr<acc>();
  acc* sum_exp_t = optional_ptr<acc>(a.sum_exp_t);
  int64_t* idx = a.idx.data_ptr<int64_t>();
  acc* probs = optional_ptr<acc>(a.probs);
  acc* soft = optional_ptr<acc>(a.soft);
  const int64_t dim = a.soft.defined() ? a.soft.size(1) : 0;
  const acc inv_t = static_cast<acc>(a.inv_temperature);
  const acc neg_inf = -std::numeric_limits<acc>::infinity();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const acc* row = logits + n * kt;
      const acc tile_max = row_max_of(row, kt);
      const acc old_max = row_max[n];
      // NaN above every number; strict, so earlier tiles win ties
      const bool tile_wins = !std::isnan(old_max) && (std::isnan(tile_max) || tile_max > old_max);
      if (tile_wins) idx[n] = a.code_offset + first_index_of(row, kt, tile_max);
      const acc new_max = tile_wins ? tile_max : old_max;
      acc* prob_row = probs != nullptr ? probs + n * kt : nullptr;
      if (new_max == neg_inf) {  // every logit so far is -inf: nothing to add
        if (prob_row != nullptr) std::fill(prob_row, prob_row + kt, acc(0));
        continue;
      }
      acc sum = 0, sum_t = 0;
      if (sum_exp_t != nullptr && prob_row != nullptr) {
        exp_sums<acc, true, true>(row, kt, new_max, inv_t, prob_row, sum, sum_t);
      } else if (sum_exp_t != nullptr) {
        exp_sums<acc, true, false>(row, kt, new_max, inv_t, prob_row, sum, sum_t);
      } else if (prob_row != nullptr) {
        exp_sums<acc, false, true>(row, kt, new_max, inv_t, prob_row, sum, sum_t);
      } else {
        exp_sums<acc, false, false>(row, kt, new_max, inv_t, prob_row, sum, sum_t);
      }
      const acc scale = std::exp(old_max - new_max);
      sum_exp[n] = sum_exp[n] * scale + sum;
      if (sum_exp_t != nullptr) sum_exp_t[n] = sum_exp_t[n] * std::exp((old_max - new_max) * inv_t) + sum_t;
      if (soft != nullptr)
        for (int64_t j = 0; j < dim; ++j) soft[n * dim + j] *= scale;
      row_max[n] = new_max;
    }
  });
}

template <typename acc, bool kProbs>
DCAE_SIMD_CLONES acc entropy_row(acc* row, int64_t kt, const acc* st, acc inv_t, acc* soft_row) {
  const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
  acc h = 0;
#pragma omp simd reduction(+ : h)
  for (int64_t k = 0; k < kt; ++k) {
    const acc x = row[k];
    const acc log_p = (x - max) * inv_t - log_sum_t;
    const acc p = fast_exp(log_p);
    if (kProbs) soft_row[k] = fast_exp(x - lse);
    h -= p * log_p;
    row[k] = p;
  }
  return h;
}

template <typename acc>
void entropy_rows(const IbqEntropyArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  acc* logits = a.logits.data_ptr<acc>();
  const acc* stats = a.row_stats.data_ptr<acc>();
  acc* row_entropy = a.row_entropy.data_ptr<acc>();
  acc* probs = optional_ptr<acc>(a.probs);
  const acc inv_t = static_cast<acc>(a.inv_temperature);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc* row = logits + n * kt;
      const acc* st = stats + n * kRowStatCount;
      if (probs != nullptr) {
        row_entropy[n] += entropy_row<acc, true>(row, kt, st, inv_t, probs + n * kt);
      } else {
        row_entropy[n] += entropy_row<acc, false>(row, kt, st, inv_t, nullptr);
      }
    }
  });
}

// One row of d(logits) (IbqGradArgs): `g_row` with kQuantize, `code_coef` with kEntropy.
template <typename acc, bool kQuantize, bool kEntropy>
DCAE_SIMD_CLONES void grad_row(const acc* row, const acc* g_row, const acc* code_coef, int64_t kt,
                               const acc* st, acc dot, acc inv_t, acc inv_rows, acc entropy_scale,
                               acc* out_row) {
  const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
  const acc row_coef = st[kRowEntropyCoef];
#pragma omp simd
  for (int64_t k = 0; k < kt; ++k) {
    const acc x = row[k];
    acc d = 0;
    if (kQuantize) d = fast_exp(x - lse) * (g_row[k] - dot);
    if (kEntropy) {
      const acc log_p = (x - max) * inv_t - log_sum_t;
      const acc p = fast_exp(log_p);
      d += entropy_scale * p * ((code_coef[k] - log_p) * inv_rows - row_coef);
    }
    out_row[k] = d;
  }
}

template <typename acc, bool kQuantize, bool kEntropy>
void grad_rows(const IbqGradArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  const acc* logits = a.logits.data_ptr<acc>();
  const acc* grad_q = kQuantize ? a.grad_logits_q.data_ptr<acc>() : nullptr;
  const acc* stats = a.row_stats.data_ptr<acc>();
  const acc* row_dot = kQuantize ? a.row_dot.data_ptr<acc>() : nullptr;
  const acc* code_coef = kEntropy ? a.code_coef.data_ptr<acc>() : nullptr;
  acc* out = a.out.data_ptr<acc>();
  const acc inv_t = static_cast<acc>(a.inv_temperature);
  const acc inv_rows = acc(1) / static_cast<acc>(a.rows_total);
  const acc entropy_scale = kEntropy ? a.grad_entropy.item<acc>() * inv_t : acc(0);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      grad_row<acc, kQuantize, kEntropy>(logits + n * kt, kQuantize ? grad_q + n * kt : nullptr, code_coef,
                                         kt, stats + n * kRowStatCount, kQuantize ? row_dot[n] : acc(0),
                                         inv_t, inv_rows, entropy_scale, out + n * kt);
    }
  });
}

void scan_cpu(const IbqScanArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "ibq_scan_cpu", [&] { scan_rows<scalar_t>(a); });
}

void entropy_cpu(const IbqEntropyArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "ibq_entropy_cpu", [&] { entropy_rows<scalar_t>(a); });
}

void grad_cpu(const IbqGradArgs& a) {
  const bool q = a.grad_logits_q.defined(), e = a.grad_entropy.defined();
  AT_DISPATCH_FLOATING_TYPES(a.logits.scalar_type(), "ibq_grad_cpu", [&] {
    if (q && e) grad_rows<scalar_t, true, true>(a);
    else if (q) grad_rows<scalar_t, true, false>(a);
    else grad_rows<scalar_t, false, true>(a);
  });
}

at::ScalarType compute_dtype_cpu(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Slabs of ~64 MB in all (~2700 codes per tile at N = 2048): few tiles, so few thread-pool
// round trips (GEMM, epilogue, GEMM, each a barrier). 8 MB slabs (cache-resident, ~320 codes)
// were 10-15% faster on an idle 2-core machine but 2-5x slower when other processes compete
// for the cores, where every barrier can wait a scheduler time slice.
const IbqEpilogues kCpuEpilogues{scan_cpu, entropy_cpu, grad_cpu, compute_dtype_cpu, int64_t(64) << 20};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ibq_forward_cpu(
    const at::Tensor& z, const at::Tensor& codebook, double temperature, bool quantize, bool entropy,
    int64_t codes_per_tile) {
  DCAE_CHECK_DEVICE_TYPE(z, "z", at::kCPU);
  return ibq_forward_driver(kCpuEpilogues, z, codebook, temperature, quantize, entropy, codes_per_tile);
}

std::tuple<at::Tensor, at::Tensor> ibq_backward_cpu(
    const c10::optional<at::Tensor>& grad_z_q, const c10::optional<at::Tensor>& grad_entropy,
    const at::Tensor& z, const at::Tensor& codebook, const at::Tensor& idx, const at::Tensor& row_stats,
    const at::Tensor& soft_codes, const at::Tensor& code_coef, double temperature, int64_t codes_per_tile) {
  DCAE_CHECK_DEVICE_TYPE(z, "z", at::kCPU);
  return ibq_backward_driver(kCpuEpilogues, grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft_codes,
                             code_coef, temperature, codes_per_tile);
}

}  // namespace
}  // namespace dcae_ext

TORCH_LIBRARY_IMPL(dcae_ext, CPU, m) {
  m.impl("ibq_forward", &dcae_ext::ibq_forward_cpu);
  m.impl("_ibq_backward", &dcae_ext::ibq_backward_cpu);
}
