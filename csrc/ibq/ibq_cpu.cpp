// CPU epilogues of the IBQ driver (ibq.cpp): at::parallel_for over the rows of a logits slab;
// one thread owns whole rows, so per-row state needs no reduction across threads. GEMMs are
// the driver's (BLAS). On CPU the GEMM operands are the accumulation dtype (bf16/fp16 inputs
// are upcast once, O((N + K) D)), so `probs` / `out` are accumulation-dtype slabs that may
// alias the logits slab: every loop reads an element before it writes the same element.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "ibq/ibq.h"

namespace dcae_ext {
namespace {

constexpr int64_t kRowsPerTask = 8;

template <typename acc>
acc* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc>() : nullptr;
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
      acc tile_max = neg_inf;
      int64_t tile_arg = 0;
      for (int64_t k = 0; k < kt; ++k) {
        if (row[k] > tile_max) {  // strict: the first maximum wins ties
          tile_max = row[k];
          tile_arg = k;
        }
      }
      const acc old_max = row_max[n];
      if (tile_max > old_max) idx[n] = a.code_offset + tile_arg;  // earlier tiles win ties
      const acc new_max = std::max(old_max, tile_max);
      acc* prob_row = probs != nullptr ? probs + n * kt : nullptr;
      if (new_max == neg_inf) {  // every logit so far is -inf: nothing to add
        if (prob_row != nullptr) std::fill(prob_row, prob_row + kt, acc(0));
        continue;
      }
      acc sum = 0, sum_t = 0;
      for (int64_t k = 0; k < kt; ++k) {
        const acc shifted = row[k] - new_max;
        const acc e = std::exp(shifted);
        sum += e;
        if (sum_exp_t != nullptr) sum_t += std::exp(shifted * inv_t);
        if (prob_row != nullptr) prob_row[k] = e;
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

template <typename acc>
void entropy_rows(const IbqEntropyArgs& a) {
  const int64_t rows = a.logits.size(0), kt = a.logits.size(1);
  acc* logits = a.logits.data_ptr<acc>();
  const acc* stats = a.row_stats.data_ptr<acc>();
  acc* row_entropy = a.row_entropy.data_ptr<acc>();
  acc* row_sq = a.row_sq.data_ptr<acc>();
  acc* probs = optional_ptr<acc>(a.probs);
  const acc inv_t = static_cast<acc>(a.inv_temperature);
  const acc eps = static_cast<acc>(kIbqEntropyEps);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc* row = logits + n * kt;
      const acc* st = stats + n * kRowStatCount;
      const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
      acc* soft_row = probs != nullptr ? probs + n * kt : nullptr;
      acc entropy = 0, sq = 0;
      for (int64_t k = 0; k < kt; ++k) {
        const acc x = row[k];
        const acc p = std::exp((x - max) * inv_t - log_sum_t);
        if (soft_row != nullptr) soft_row[k] = std::exp(x - lse);
        entropy -= p * std::log(p + eps);
        sq += p * p / (p + eps);
        row[k] = p;
      }
      row_entropy[n] += entropy;
      row_sq[n] += sq;
    }
  });
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
  const acc eps = static_cast<acc>(kIbqEntropyEps);
  const acc entropy_scale = kEntropy ? a.grad_entropy.item<acc>() * inv_t : acc(0);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const acc* row = logits + n * kt;
      const acc* st = stats + n * kRowStatCount;
      const acc max = st[kRowMax], lse = st[kRowLse], log_sum_t = st[kRowLogSumT];
      const acc row_coef = st[kRowEntropyCoef];
      const acc dot = kQuantize ? row_dot[n] : acc(0);
      acc* out_row = out + n * kt;
      for (int64_t k = 0; k < kt; ++k) {
        const acc x = row[k];
        acc d = 0;
        if (kQuantize) d = std::exp(x - lse) * (grad_q[n * kt + k] - dot);
        if (kEntropy) {
          const acc p = std::exp((x - max) * inv_t - log_sum_t);
          const acc self_term = -(std::log(p + eps) + p / (p + eps));
          d += entropy_scale * p * ((self_term + code_coef[k]) * inv_rows - row_coef);
        }
        out_row[k] = d;
      }
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

// Slabs of ~64 MB in all: few enough tiles that the per-tile thread-pool round trips (GEMM,
// epilogue, GEMM) stay small next to the work, with the workspace still bounded.
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
