// CPU epilogue kernels of the IBQ driver (ibq.cpp), math in docs/ibq.md: at::parallel_for
// over the rows of a logits slab; one thread owns whole rows, so per-row state needs no
// reduction across threads. On CPU every slab is in the accumulation dtype, so `probs` / `out`
// may alias the logits slab: every loop reads an element before it writes the same element.
//
// Each row is swept by `#pragma omp simd` loops without early exits (max, then the first index
// of the max, then the exp sums), calling the branch-free float exp of ibq_cpu_math.h so that
// they vectorise; the row functions carry DCAE_SIMD_CLONES. A row of one tile (hundreds to
// thousands of codes) stays in L1/L2 between the sweeps. The per-row sums are SIMD-lane
// partial sums, in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cpu_simd.h"
#include "common/dispatch.h"
#include "common/static_switch.h"
#include "common/tensor_access.h"
#include "ibq/ibq.h"
#include "ibq/ibq_cpu_math.h"

namespace dcae_ext {
namespace {

constexpr int64_t kRowsPerTask = 8;
constexpr int64_t kArgmaxChunk = 64;  // codes tested together for the first maximum

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

// Merges the row's codes into its candidates (value desc, code asc; IbqScanArgs): a code
// enters when its logit beats the last candidate, so after the first tile few do. Codes come
// in increasing order, so an equal value already kept stays ahead. NaN never enters.
template <typename acc>
void merge_candidates(const acc* __restrict row, int64_t kt, int64_t code_offset, acc* value, int64_t* code) {
  constexpr int64_t last = kIbqCandidates - 1;
  for (int64_t k0 = 0; k0 < kt; k0 += kArgmaxChunk) {
    const int64_t k1 = std::min(kt, k0 + kArgmaxChunk);
    const acc threshold = value[last];
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t k = k0; k < k1; ++k) hit |= row[k] > threshold;
    if (!hit) continue;
    for (int64_t k = k0; k < k1; ++k) {
      const acc x = row[k];
      if (!(x > value[last])) continue;
      int64_t pos = last;
      for (; pos > 0 && value[pos - 1] < x; --pos) {
        value[pos] = value[pos - 1];
        code[pos] = code[pos - 1];
      }
      value[pos] = x;
      code[pos] = code_offset + k;
    }
  }
}

// sum_k exp(row[k] - max) [-> sum] and sum_k exp((row[k] - max) / T) [-> sum_t, kEntropy];
// exp(row[k] - max) is stored to probs[k] when kProbs (probs may alias row).
template <typename acc, bool kEntropy, bool kProbs>
DCAE_SIMD_CLONES void exp_sums(const acc* row, int64_t kt, acc max, acc inv_t, acc* probs, acc& sum,
                               acc& sum_t) {
  acc s = 0, s_t = 0;
#pragma omp simd reduction(+ : s, s_t)
  for (int64_t k = 0; k < kt; ++k) {
    const acc shifted = row[k] - max;
    const acc e = fast_exp(shifted);
    s += e;
    if (kEntropy) s_t += fast_exp(shifted * inv_t);
    if (kProbs) probs[k] = e;
  }
  sum = s;
  sum_t = s_t;
}

// Pass 1 on one slab; kEntropy: also sum exp((l - m) / T), kProbs: also write exp(l - m).
template <typename acc, bool kEntropy, bool kProbs>
void scan_rows(const IbqScanArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  const acc* logits = a.logits.data_ptr<acc>();
  acc* row_max = a.row_max.data_ptr<acc>();
  acc* sum_exp = a.sum_exp.data_ptr<acc>();
  acc* sum_exp_t = optional_ptr<acc>(a.sum_exp_t);
  int64_t* idx = a.idx.data_ptr<int64_t>();
  acc* probs = optional_ptr<acc>(a.probs);
  acc* soft = optional_ptr<acc>(a.soft);
  acc* cand_value = optional_ptr<acc>(a.cand_value);
  int64_t* cand_code = optional_ptr<int64_t>(a.cand_code);
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
      if (cand_value != nullptr)
        merge_candidates(row, kt, a.code_offset, cand_value + n * kIbqCandidates, cand_code + n * kIbqCandidates);
      const acc new_max = tile_wins ? tile_max : old_max;
      acc* prob_row = probs != nullptr ? probs + n * kt : nullptr;
      if (new_max == neg_inf) {  // every logit so far is -inf: nothing to add
        if (prob_row != nullptr) std::fill(prob_row, prob_row + kt, acc(0));
        continue;
      }
      acc sum = 0, sum_t = 0;
      exp_sums<acc, kEntropy, kProbs>(row, kt, new_max, inv_t, prob_row, sum, sum_t);
      const acc scale = std::exp(old_max - new_max);  // rescales the sums of earlier tiles
      sum_exp[n] = sum_exp[n] * scale + sum;
      if (kEntropy) sum_exp_t[n] = sum_exp_t[n] * std::exp((old_max - new_max) * inv_t) + sum_t;
      if (soft != nullptr && tile_wins)  // otherwise the scale is 1, or NaN on a row that is NaN already
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

// Pass 2 on one slab: p = softmax(l / T) in place, H_n += -sum p log p; kProbs: s = softmax(l).
template <typename acc, bool kProbs>
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
      row_entropy[n] += entropy_row<acc, kProbs>(row, kt, st, inv_t, kProbs ? probs + n * kt : nullptr);
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

}  // namespace

// The slabs are in the accumulation dtype (float32 or float64) on CPU.
void ibq_scan_cpu(const IbqScanArgs& a) {
  DCAE_DISPATCH_FLOATING(a.logits.scalar_type(), "ibq_scan_cpu", [&] {
    DCAE_BOOL_SWITCH(a.sum_exp_t.defined(), kEntropy, [&] {
      DCAE_BOOL_SWITCH(a.probs.defined(), kProbs, [&] { scan_rows<acc_t<scalar_t>, kEntropy, kProbs>(a); });
    });
  });
}

void ibq_entropy_cpu(const IbqEntropyArgs& a) {
  DCAE_DISPATCH_FLOATING(a.logits.scalar_type(), "ibq_entropy_cpu", [&] {
    DCAE_BOOL_SWITCH(a.probs.defined(), kProbs, [&] { entropy_rows<acc_t<scalar_t>, kProbs>(a); });
  });
}

void ibq_grad_cpu(const IbqGradArgs& a) {
  DCAE_DISPATCH_FLOATING(a.logits.scalar_type(), "ibq_grad_cpu", [&] {
    DCAE_BOOL_SWITCH(a.grad_logits_q.defined(), kQuantize, [&] {
      DCAE_BOOL_SWITCH(a.grad_entropy.defined(), kEntropy,
                       [&] { grad_rows<acc_t<scalar_t>, kQuantize, kEntropy>(a); });
    });
  });
}

}  // namespace dcae_ext
