// CPU kernels of linear attention. Work items are (batch*head, token chunk) pairs: one chunk per
// head when there are enough heads to fill the threads, more otherwise. Each item walks its
// tokens in tiles of kTile: the tile is converted once into small float (double) buffers (relu
// applied, strides resolved, so any input layout works without a copy) and every product is a
// small dense matmul on those buffers. A state (reduction over tokens) is accumulated per item
// and summed over the chunks of a head before the next pass. Backward: 3 passes (state of k, v;
// queries -> dq and the state's gradient; keys -> dk, dv).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/cpu_simd.h"
#include "common/dispatch.h"
#include "linear_attention/linear_attention.h"

namespace dcae_ext {
namespace {

constexpr int64_t kTile = 64;

// A vector of kBytes bytes of T: one AVX-512 register in the x86-64-v4 clone, two AVX2 registers
// in the v3 clone, SSE pairs otherwise. aligned(alignof(T)) makes unaligned loads/stores legal.
template <typename T, int kBytes>
struct VecOf {
  typedef T type __attribute__((vector_size(kBytes), aligned(alignof(T))));
};

// Rows [i, i + kRows) of C (m x n, ldc) += A (m x k, lda) * B (k x n, ldb), columns [j, j + width):
// the C block stays in registers over the k loop, each B vector load feeds kRows FMAs.
template <typename T, int kBytes, int kRows>
DCAE_FORCE_INLINE void matmul_block(int64_t k, const T* __restrict A, int64_t lda,
                                    const T* __restrict B, int64_t ldb, T* __restrict C,
                                    int64_t ldc) {
  using V = typename VecOf<T, kBytes>::type;
  V acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = *reinterpret_cast<const V*>(C + r * ldc);
  for (int64_t p = 0; p < k; ++p) {
    const V b = *reinterpret_cast<const V*>(B + p * ldb);
    for (int r = 0; r < kRows; ++r) acc[r] += A[r * lda + p] * b;
  }
  for (int r = 0; r < kRows; ++r) *reinterpret_cast<V*>(C + r * ldc) = acc[r];
}

template <typename T, int kRows>
DCAE_FORCE_INLINE void matmul_rows(int64_t k, int64_t n, const T* __restrict A, int64_t lda,
                                   const T* __restrict B, int64_t ldb, T* __restrict C,
                                   int64_t ldc) {
  constexpr int64_t kWide = 64 / sizeof(T), kNarrow = 32 / sizeof(T);
  int64_t j = 0;
  for (; j + kWide <= n; j += kWide) matmul_block<T, 64, kRows>(k, A, lda, B + j, ldb, C + j, ldc);
  for (; j + kNarrow <= n; j += kNarrow) matmul_block<T, 32, kRows>(k, A, lda, B + j, ldb, C + j, ldc);
  for (; j < n; ++j)
    for (int r = 0; r < kRows; ++r) {
      T sum = C[r * ldc + j];
      for (int64_t p = 0; p < k; ++p) sum += A[r * lda + p] * B[p * ldb + j];
      C[r * ldc + j] = sum;
    }
}

// C (m x n, ldc) += A (m x k, lda) * B (k x n, ldb), rows four at a time.
template <typename T>
DCAE_FORCE_INLINE void matmul_acc_impl(int64_t m, int64_t k, int64_t n, const T* __restrict A,
                                       int64_t lda, const T* __restrict B, int64_t ldb,
                                       T* __restrict C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) matmul_rows<T, 4>(k, n, A + i * lda, lda, B, ldb, C + i * ldc, ldc);
  for (; i < m; ++i) matmul_rows<T, 1>(k, n, A + i * lda, lda, B, ldb, C + i * ldc, ldc);
}

DCAE_SIMD_CLONES void matmul_acc(int64_t m, int64_t k, int64_t n, const float* A, int64_t lda, const float* B,
                                int64_t ldb, float* C, int64_t ldc) {
  matmul_acc_impl<float>(m, k, n, A, lda, B, ldb, C, ldc);
}

DCAE_SIMD_CLONES void matmul_acc(int64_t m, int64_t k, int64_t n, const double* A, int64_t lda, const double* B,
                                int64_t ldb, double* C, int64_t ldc) {
  matmul_acc_impl<double>(m, k, n, A, lda, B, ldb, C, ldc);
}

// The masked elementwise steps of the backward, branch-free (the signs are random, so a
// branch mispredicts half the time) and with restrict so they vectorise.
// dk: io[t] = 1[k_t > 0] (io[t] + dksum_c)
template <typename T>
DCAE_FORCE_INLINE void key_grad_impl(int64_t n, T* __restrict io, T dksum_c,
                                     const T* __restrict relu_k) {
  for (int64_t t = 0; t < n; ++t) {
    const T value = io[t] + dksum_c;
    io[t] = relu_k[t] > T(0) ? value : T(0);
  }
}
// dq: w[t] = 1[q_t > 0] (w[t] / den_t + ksum_c dden_t); g[t] = g[t] / den_t (becomes dnum).
template <typename T>
DCAE_FORCE_INLINE void query_grad_impl(int64_t n, T* __restrict w, T* __restrict g,
                                       const T* __restrict relu_q, const T* __restrict inv_den,
                                       const T* __restrict dden, T ksum_c) {
  for (int64_t t = 0; t < n; ++t) {
    const T value = w[t] * inv_den[t] + ksum_c * dden[t];
    w[t] = relu_q[t] > T(0) ? value : T(0);
    g[t] *= inv_den[t];
  }
}

DCAE_SIMD_CLONES void key_grad(int64_t n, float* io, float dksum_c, const float* relu_k) {
  key_grad_impl<float>(n, io, dksum_c, relu_k);
}
DCAE_SIMD_CLONES void key_grad(int64_t n, double* io, double dksum_c, const double* relu_k) {
  key_grad_impl<double>(n, io, dksum_c, relu_k);
}
DCAE_SIMD_CLONES void query_grad(int64_t n, float* w, float* g, const float* relu_q, const float* inv_den,
                                const float* dden, float ksum_c) {
  query_grad_impl<float>(n, w, g, relu_q, inv_den, dden, ksum_c);
}
DCAE_SIMD_CLONES void query_grad(int64_t n, double* w, double* g, const double* relu_q, const double* inv_den,
                                const double* dden, double ksum_c) {
  query_grad_impl<double>(n, w, g, relu_q, inv_den, dden, ksum_c);
}

template <typename acc>
inline acc relu(acc x) {
  return x < acc(0) ? acc(0) : x;  // NaN stays NaN, like torch.relu
}

// Copies tokens [n0, n0 + len) of one head's (d, N) slice into acc buffers.
// channel-major: dst[c * kTile + t]; token-major: dst[t * d + c].
template <typename scalar_t, typename acc>
void load_channel_major(const scalar_t* src, Strides4 s, int64_t d, int64_t n0, int64_t len, bool apply_relu,
                        acc* dst) {
  for (int64_t c = 0; c < d; ++c) {
    const scalar_t* row = src + c * s.dim2 + n0 * s.dim3;
    acc* out = dst + c * kTile;
    if (s.dim3 == 1) {  // the common layout: a plain loop the compiler vectorises
      // 32+ rows per tile are too many streams for the hardware prefetcher: ask for the next
      // tile's lines now (prefetching past the tensor's end is harmless).
      for (int64_t line = 0; line < kTile; line += 64 / static_cast<int64_t>(sizeof(scalar_t)))
        __builtin_prefetch(row + kTile + line);
      if (apply_relu) {
        for (int64_t t = 0; t < len; ++t) out[t] = relu(static_cast<acc>(row[t]));
      } else {
        for (int64_t t = 0; t < len; ++t) out[t] = static_cast<acc>(row[t]);
      }
    } else if (apply_relu) {
      for (int64_t t = 0; t < len; ++t) out[t] = relu(static_cast<acc>(row[t * s.dim3]));
    } else {
      for (int64_t t = 0; t < len; ++t) out[t] = static_cast<acc>(row[t * s.dim3]);
    }
  }
}

template <typename acc>
void transpose_tile(const acc* channel_major, int64_t d, int64_t len, acc* token_major) {
  for (int64_t c = 0; c < d; ++c)
    for (int64_t t = 0; t < len; ++t) token_major[t * d + c] = channel_major[c * kTile + t];
}

template <typename scalar_t, typename acc>
void store_channel_major(const acc* src, int64_t d, int64_t len, scalar_t* dst, Strides4 s, int64_t n0) {
  for (int64_t c = 0; c < d; ++c) {
    scalar_t* row = dst + c * s.dim2 + n0 * s.dim3;
    const acc* in = src + c * kTile;
    if (s.dim3 == 1) {
      for (int64_t t = 0; t < len; ++t) row[t] = static_cast<scalar_t>(in[t]);
    } else {
      for (int64_t t = 0; t < len; ++t) row[t * s.dim3] = static_cast<scalar_t>(in[t]);
    }
  }
}

// How the tokens of each head are split into work items.
struct Plan {
  int64_t heads_total, dim, tokens, chunks, chunk_len;
  int64_t items() const { return heads_total * chunks; }
  int64_t state_size() const { return (dim + 1) * dim; }
  // Items per thread at least: small problems run on the calling thread (waking the pool
  // costs more than ~64k multiply-adds).
  int64_t grain() const { return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, chunk_len * dim * dim)); }
  static constexpr int64_t kMinTaskWork = int64_t{1} << 16;
};

// Chunks of a fixed token count, never derived from the thread count: the summation order, and so
// every bit of the result, is the same on any machine and under any torch.set_num_threads.
constexpr int64_t kChunkTokens = 8 * kTile;

Plan make_plan(const AttentionGeometry& geo) {
  Plan plan{geo.heads_total(), geo.dim, geo.tokens, 1, std::max<int64_t>(geo.tokens, 1)};
  if (geo.tokens > kChunkTokens) {
    plan.chunk_len = kChunkTokens;
    plan.chunks = (geo.tokens + kChunkTokens - 1) / kChunkTokens;
  }
  return plan;
}

template <typename scalar_t>
const scalar_t* head_ptr(const scalar_t* base, Strides4 s, int64_t bh, int64_t heads) {
  return base + (bh / heads) * s.dim0 + (bh % heads) * s.dim1;
}
template <typename scalar_t>
scalar_t* head_ptr(scalar_t* base, Strides4 s, int64_t bh, int64_t heads) {
  return base + (bh / heads) * s.dim0 + (bh % heads) * s.dim1;
}

// Runs fn(bh, n_begin, n_end, partial) over all items, each with a zeroed (d+1) x d partial,
// then returns the per-head sums of the partials (heads_total x (d+1) x d).
template <typename acc, typename Fn>
std::vector<acc> reduce_over_tokens(const Plan& plan, Fn fn) {
  const int64_t size = plan.state_size();
  std::vector<acc> partial(plan.items() * size, acc(0));
  at::parallel_for(0, plan.items(), plan.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / plan.chunks, chunk = item % plan.chunks;
      const int64_t n_begin = chunk * plan.chunk_len;
      fn(bh, n_begin, std::min(plan.tokens, n_begin + plan.chunk_len), partial.data() + item * size);
    }
  });
  if (plan.chunks == 1) return partial;
  std::vector<acc> total(plan.heads_total * size, acc(0));
  const int64_t grain = std::max<int64_t>(1, Plan::kMinTaskWork / (plan.chunks * size));
  at::parallel_for(0, plan.heads_total, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      for (int64_t chunk = 0; chunk < plan.chunks; ++chunk) {
        const acc* src = partial.data() + (bh * plan.chunks + chunk) * size;
        acc* dst = total.data() + bh * size;
        for (int64_t e = 0; e < size; ++e) dst[e] += src[e];
      }
  });
  return total;
}

// Runs fn(bh, n_begin, n_end) over all items.
template <typename Fn>
void for_each_item(const Plan& plan, Fn fn) {
  at::parallel_for(0, plan.items(), plan.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / plan.chunks, chunk = item % plan.chunks;
      const int64_t n_begin = chunk * plan.chunk_len;
      fn(bh, n_begin, std::min(plan.tokens, n_begin + plan.chunk_len));
    }
  });
}

// state rows 0..d-1: vk = v relu(k)^T; row d: ksum = sum relu(k)^T.
template <typename scalar_t, typename acc>
std::vector<acc> compute_state(const Plan& plan, int64_t heads, const at::Tensor& k, const at::Tensor& v) {
  const int64_t d = plan.dim;
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  const Strides4 ks = strides_of(k), vs = strides_of(v);
  return reduce_over_tokens<acc>(plan, [&](int64_t bh, int64_t n_begin, int64_t n_end, acc* state) {
    std::vector<acc> kbuf(d * kTile), kt(kTile * d), vbuf((d + 1) * kTile, acc(0));
    std::fill(vbuf.begin() + d * kTile, vbuf.end(), acc(1));  // the ones row: gives ksum
    const scalar_t* kh = head_ptr(kp, ks, bh, heads);
    const scalar_t* vh = head_ptr(vp, vs, bh, heads);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
      const int64_t len = std::min(kTile, n_end - n0);
      load_channel_major(kh, ks, d, n0, len, /*apply_relu=*/true, kbuf.data());
      transpose_tile(kbuf.data(), d, len, kt.data());
      load_channel_major(vh, vs, d, n0, len, /*apply_relu=*/false, vbuf.data());
      matmul_acc(d + 1, len, d, vbuf.data(), kTile, kt.data(), d, state, d);
    }
  });
}

at::Tensor linear_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps) {
  const AttentionGeometry geo = check_linear_attention_args(q, k, v, eps);
  DCAE_CHECK_DEVICE_TYPE(q, "q", c10::kCPU);
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  const Plan plan = make_plan(geo);
  DCAE_DISPATCH_FLOATING(q.scalar_type(), "dcae_ext_linear_attention_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const int64_t d = plan.dim;
    const std::vector<acc> state = compute_state<scalar_t, acc>(plan, geo.heads, k, v);
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const Strides4 qs = strides_of(q), os = strides_of(out);
    for_each_item(plan, [&](int64_t bh, int64_t n_begin, int64_t n_end) {
      std::vector<acc> qbuf(d * kTile), numden((d + 1) * kTile);
      const acc* st = state.data() + bh * plan.state_size();
      const scalar_t* qh = head_ptr(qp, qs, bh, geo.heads);
      scalar_t* oh = head_ptr(op, os, bh, geo.heads);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
        const int64_t len = std::min(kTile, n_end - n0);
        load_channel_major(qh, qs, d, n0, len, /*apply_relu=*/true, qbuf.data());
        std::fill(numden.begin(), numden.end(), acc(0));
        matmul_acc(d + 1, d, len, st, d, qbuf.data(), kTile, numden.data(), kTile);  // [num; den - eps]
        acc* inv_den = numden.data() + d * kTile;
        for (int64_t t = 0; t < len; ++t) inv_den[t] = acc(1) / (inv_den[t] + static_cast<acc>(eps));
        for (int64_t c = 0; c < d; ++c)
          for (int64_t t = 0; t < len; ++t) numden[c * kTile + t] *= inv_den[t];
        store_channel_major(numden.data(), d, len, oh, os, n0);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_cpu(const at::Tensor& grad_out,
                                                                             const at::Tensor& q,
                                                                             const at::Tensor& k,
                                                                             const at::Tensor& v, double eps) {
  const AttentionGeometry geo = check_linear_attention_args(q, k, v, eps, grad_out);
  DCAE_CHECK_DEVICE_TYPE(q, "q", c10::kCPU);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (dq.numel() == 0) return {dq, dk, dv};
  const Plan plan = make_plan(geo);
  DCAE_DISPATCH_FLOATING(q.scalar_type(), "dcae_ext_linear_attention_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const int64_t d = plan.dim, size = plan.state_size();
    const std::vector<acc> state = compute_state<scalar_t, acc>(plan, geo.heads, k, v);
    // vk^T per head: the query pass multiplies it with G.
    std::vector<acc> vk_t(plan.heads_total * d * d);
    for (int64_t bh = 0; bh < plan.heads_total; ++bh)
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) vk_t[bh * d * d + j * d + i] = state[bh * size + i * d + j];

    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const Strides4 qs = strides_of(q), gs = strides_of(grad_out), dqs = strides_of(dq);
    scalar_t* dqp = dq.mutable_data_ptr<scalar_t>();
    const std::vector<acc> dstate = reduce_over_tokens<acc>(plan, [&](int64_t bh, int64_t n_begin, int64_t n_end,
                                                                      acc* dst) {
      std::vector<acc> qbuf(d * kTile), qt(kTile * d), gbuf((d + 1) * kTile), w(d * kTile), den(kTile);
      const acc* ksum = state.data() + bh * size + d * d;
      const acc* vkt = vk_t.data() + bh * d * d;
      const scalar_t* qh = head_ptr(qp, qs, bh, geo.heads);
      const scalar_t* gh = head_ptr(gp, gs, bh, geo.heads);
      scalar_t* dqh = head_ptr(dqp, dqs, bh, geo.heads);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
        const int64_t len = std::min(kTile, n_end - n0);
        load_channel_major(qh, qs, d, n0, len, /*apply_relu=*/true, qbuf.data());
        transpose_tile(qbuf.data(), d, len, qt.data());
        load_channel_major(gh, gs, d, n0, len, /*apply_relu=*/false, gbuf.data());
        std::fill(den.begin(), den.end(), static_cast<acc>(eps));
        matmul_acc(1, d, len, ksum, d, qbuf.data(), kTile, den.data(), kTile);
        std::fill(w.begin(), w.end(), acc(0));
        matmul_acc(d, d, len, vkt, d, gbuf.data(), kTile, w.data(), kTile);  // w = vk^T G
        acc* dden = gbuf.data() + d * kTile;  // row d of gbuf: after this loop G becomes [dnum; dden]
        for (int64_t t = 0; t < len; ++t) dden[t] = acc(0);
        for (int64_t c = 0; c < d; ++c)
          for (int64_t t = 0; t < len; ++t) dden[t] += w[c * kTile + t] * qbuf[c * kTile + t];
        for (int64_t t = 0; t < len; ++t) {
          den[t] = acc(1) / den[t];  // from here on: 1 / den
          dden[t] = -(dden[t] * den[t]) * den[t];
        }
        for (int64_t c = 0; c < d; ++c) {
          acc* wc = w.data() + c * kTile;  // becomes dq in place
          acc* gc = gbuf.data() + c * kTile;
          const acc* qc = qbuf.data() + c * kTile;
          query_grad(len, wc, gc, qc, den.data(), dden, ksum[c]);
        }
        store_channel_major(w.data(), d, len, dqh, dqs, n0);
        matmul_acc(d + 1, len, d, gbuf.data(), kTile, qt.data(), d, dst, d);  // [dvk; dksum]
      }
    });

    // dvk^T per head, for dk.
    std::vector<acc> dvk_t(plan.heads_total * d * d);
    for (int64_t bh = 0; bh < plan.heads_total; ++bh)
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) dvk_t[bh * d * d + j * d + i] = dstate[bh * size + i * d + j];
    const scalar_t* kp = k.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const Strides4 ks = strides_of(k), vs = strides_of(v);
    const Strides4 dks = strides_of(dk), dvs = strides_of(dv);
    scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
    scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
    for_each_item(plan, [&](int64_t bh, int64_t n_begin, int64_t n_end) {
      std::vector<acc> kbuf(d * kTile), vbuf(d * kTile), dkbuf(d * kTile), dvbuf(d * kTile);
      const acc* dvk = dstate.data() + bh * size;
      const acc* dksum = dvk + d * d;
      const acc* dvkt = dvk_t.data() + bh * d * d;
      const scalar_t* kh = head_ptr(kp, ks, bh, geo.heads);
      const scalar_t* vh = head_ptr(vp, vs, bh, geo.heads);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
        const int64_t len = std::min(kTile, n_end - n0);
        load_channel_major(kh, ks, d, n0, len, /*apply_relu=*/true, kbuf.data());
        load_channel_major(vh, vs, d, n0, len, /*apply_relu=*/false, vbuf.data());
        std::fill(dvbuf.begin(), dvbuf.end(), acc(0));
        matmul_acc(d, d, len, dvk, d, kbuf.data(), kTile, dvbuf.data(), kTile);  // dv = dvk relu(k)
        std::fill(dkbuf.begin(), dkbuf.end(), acc(0));
        matmul_acc(d, d, len, dvkt, d, vbuf.data(), kTile, dkbuf.data(), kTile);  // dvk^T v
        for (int64_t c = 0; c < d; ++c) {
          acc* dkc = dkbuf.data() + c * kTile;
          const acc* kc = kbuf.data() + c * kTile;
          key_grad(len, dkc, dksum[c], kc);
        }
        store_channel_major(dvbuf.data(), d, len, head_ptr(dvp, dvs, bh, geo.heads), dvs, n0);
        store_channel_major(dkbuf.data(), d, len, head_ptr(dkp, dks, bh, geo.heads), dks, n0);
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcae_ext, CPU, m) {
  m.impl("linear_attention", &linear_attention_cpu);
  m.impl("_linear_attention_backward", &linear_attention_backward_cpu);
}

}  // namespace dcae_ext
