// CUDA kernels of linear attention (docs/linear_attention.md), templated on the head dim padded
// to D in {8, 16, 32, 64}; larger heads and float64 run the ATen composite. Forward: state_kernel
// then output_kernel; backward: state_kernel, query_kernel, key_kernel. float32 accumulation.
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/static_switch.h"
#include "linear_attention/linear_attention.h"

namespace dcae_ext {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename acc>
struct TileSize {
  static constexpr int value = 128;  // tokens per tile
};

template <int D>
struct Padded {
  static constexpr int kStride = D + 4;  // room for row D, float4-aligned rows
};

template <typename acc>
struct Four {
  acc x, y, z, w;
};

__device__ __forceinline__ Four<float> load4(const float* p) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  return {v.x, v.y, v.z, v.w};
}
__device__ __forceinline__ void store4(float* p, float x, float y, float z, float w) {
  *reinterpret_cast<float4*>(p) = make_float4(x, y, z, w);
}

template <typename acc>
__device__ __forceinline__ acc relu(acc x) {
  return x < acc(0) ? acc(0) : x;  // NaN stays NaN, like torch.relu
}

template <typename scalar_t>
struct VecWidth {
  static constexpr int value = 16 / sizeof(scalar_t);  // elements per 16-byte load
};

// One head's (d, N) slice: element (c, n) at base[c * c_stride + n * n_stride].
template <typename scalar_t>
struct HeadView {
  const scalar_t* base;
  int64_t c_stride, n_stride;
  __device__ __forceinline__ scalar_t at(int c, int64_t n) const { return base[c * c_stride + n * n_stride]; }
};

template <typename scalar_t>
__device__ __forceinline__ HeadView<scalar_t> head_view(const scalar_t* base, Strides4 s, int64_t bh, int heads) {
  return {base + (bh / heads) * s.dim0 + (bh % heads) * s.dim1, s.dim2, s.dim3};
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t* head_out(scalar_t* base, Strides4 s, int64_t bh, int heads) {
  return base + (bh / heads) * s.dim0 + (bh % heads) * s.dim1;
}

// True when every row of every head of t starts 16-byte aligned and tokens are contiguous.
inline bool vector_loads_ok(const at::Tensor& t) {
  const int64_t width = 16 / t.element_size();
  return t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 &&
         t.stride(0) % width == 0 && t.stride(1) % width == 0 && t.stride(2) % width == 0;
}

// Block-cooperative load of tokens [n0, n0 + len) of a head into tile[t * kStride + c]
// (zero for c >= d or t >= len). Each item is kVec consecutive tokens of one channel: pairs of
// items cover one 32-byte sector of a row, consecutive pairs walk the channels, which keeps
// the transposing shared-memory stores nearly free of bank conflicts.
template <typename scalar_t, typename acc, int D, bool kRelu>
__device__ void load_tile(HeadView<scalar_t> src, bool vec_ok, int d, int64_t n0, int len, acc* tile) {
  constexpr int kTile = TileSize<acc>::value, kVec = VecWidth<scalar_t>::value;
  constexpr int kStride = Padded<D>::kStride, kChunks = kTile / kVec;
  static_assert(kChunks % 2 == 0, "tile must hold an even number of 16-byte chunks");
  for (int idx = threadIdx.x; idx < D * kChunks; idx += kThreads) {
    const int c = (idx >> 1) % D;
    const int t0 = (((idx >> 1) / D) * 2 + (idx & 1)) * kVec;
    acc vals[kVec];
    if (c < d && vec_ok && t0 + kVec <= len) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src.base + c * src.c_stride + n0 + t0));
      const scalar_t* e = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
      for (int u = 0; u < kVec; ++u) vals[u] = static_cast<acc>(e[u]);
    } else {
#pragma unroll
      for (int u = 0; u < kVec; ++u)
        vals[u] = (c < d && t0 + u < len) ? static_cast<acc>(src.at(c, n0 + t0 + u)) : acc(0);
    }
#pragma unroll
    for (int u = 0; u < kVec; ++u) tile[(t0 + u) * kStride + c] = kRelu ? relu(vals[u]) : vals[u];
  }
}

// A (D+1) x D state sum_t rows_t cols_t^T held in registers across a block: lane (g, j) of each
// warp owns columns j + l * kLanes for tokens of group g; rows_t[D] is 1 (kOnesRow) or the tile's
// column D.
template <typename acc, int D, bool kOnesRow>
struct StateAccumulator {
  static constexpr int kLanes = D < 32 ? D : 32;
  static constexpr int kGroups = 32 / kLanes;
  static constexpr int kCols = D / kLanes;
  static constexpr int kStride = Padded<D>::kStride;
  acc st[kCols][D + 1];

  __device__ void zero() {
#pragma unroll
    for (int l = 0; l < kCols; ++l)
#pragma unroll
      for (int i = 0; i <= D; ++i) st[l][i] = acc(0);
  }

  __device__ void add_tile(const acc* rows, const acc* cols, int len) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j0 = lane % kLanes, group = lane / kLanes;
    for (int t = warp * kGroups + group; t < len; t += kWarps * kGroups) {
      acc col[kCols];
#pragma unroll
      for (int l = 0; l < kCols; ++l) col[l] = cols[t * kStride + j0 + l * kLanes];
      const acc* row = rows + t * kStride;
#pragma unroll
      for (int i = 0; i < D; i += 4) {
        const Four<acc> r = load4(row + i);
#pragma unroll
        for (int l = 0; l < kCols; ++l) {
          st[l][i] += r.x * col[l];
          st[l][i + 1] += r.y * col[l];
          st[l][i + 2] += r.z * col[l];
          st[l][i + 3] += r.w * col[l];
        }
      }
      const acc last = kOnesRow ? acc(1) : row[D];
#pragma unroll
      for (int l = 0; l < kCols; ++l) st[l][D] += last * col[l];
    }
  }

  // Sums the block's states in a fixed order (lane groups, then warps) and adds the total to
  // out ((D+1) x D, row-major) with atomics (kAtomic: other blocks add to the same head), or
  // stores it (out is this block's own slot). scratch: shared memory of >= kScratch elements
  // that no thread reads any more.
  static constexpr int kScratch = kWarps * (D + 1) * D;
  template <bool kAtomic>
  __device__ void flush(acc* scratch, acc* out) {
#pragma unroll
    for (int offset = kLanes; offset < 32; offset <<= 1)
#pragma unroll
      for (int l = 0; l < kCols; ++l)
#pragma unroll
        for (int i = 0; i <= D; ++i) st[l][i] += __shfl_xor_sync(0xffffffffu, st[l][i], offset);
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    acc* warp_state = scratch + warp * (D + 1) * D;
    if (lane < kLanes) {
#pragma unroll
      for (int l = 0; l < kCols; ++l)
#pragma unroll
        for (int i = 0; i <= D; ++i) warp_state[i * D + lane + l * kLanes] = st[l][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < (D + 1) * D; idx += kThreads) {
      acc total = scratch[idx];
      for (int w = 1; w < kWarps; ++w) total += scratch[w * (D + 1) * D + idx];
      if (kAtomic) {
        atomicAdd(&out[idx], total);
      } else {
        out[idx] = total;
      }
    }
  }
};

// The (D+1) x D state of a head when its token splits were flushed to their own slots:
// slots (heads, splits, D+1, D) summed in split order, so the result never depends on timing.
template <typename acc, int D>
__global__ void __launch_bounds__(kThreads) sum_split_slots(const acc* __restrict__ slots, int64_t splits,
                                                            acc* __restrict__ state) {
  constexpr int kSize = (D + 1) * D;
  const int64_t bh = blockIdx.x;
  for (int idx = threadIdx.x; idx < kSize; idx += kThreads) {
    acc total = acc(0);
    for (int64_t split = 0; split < splits; ++split) total += slots[(bh * splits + split) * kSize + idx];
    state[bh * kSize + idx] = total;
  }
}

// Where a block flushes its part of a head's state: the head's state (atomics) or its own slot.
template <int D, bool kAtomic>
__device__ __forceinline__ int64_t state_offset(int64_t bh) {
  return (kAtomic ? bh : bh * gridDim.y + blockIdx.y) * (D + 1) * D;
}

struct Launch {
  int heads, d;
  int64_t tokens;
};

template <typename acc, int D>
__device__ __forceinline__ void load_state(const acc* global_state, acc* smem) {
  for (int idx = threadIdx.x; idx < (D + 1) * D; idx += kThreads) smem[idx] = global_state[idx];
  __syncthreads();
}

// dot(row[0..D), x) with row in shared memory (float4 broadcasts), x in registers.
template <typename acc, int D>
__device__ __forceinline__ acc dot_row(const acc* row, const acc (&x)[D]) {
  acc sum = acc(0);
#pragma unroll
  for (int j = 0; j < D; j += 4) {
    const Four<acc> r = load4(row + j);
    sum += r.x * x[j] + r.y * x[j + 1] + r.z * x[j + 2] + r.w * x[j + 3];
  }
  return sum;
}

// The (D+1) x D state sum_t [v_t; 1] relu(k_t)^T of a head: grid (B x heads, splits), a block
// sums every splits-th tile of 128 tokens, loaded token-major into shared memory.
template <typename scalar_t, typename acc, int D, bool kAtomic>
__global__ void __launch_bounds__(kThreads) state_kernel(const scalar_t* __restrict__ k, Strides4 ks,
                                                         bool k_vec, const scalar_t* __restrict__ v,
                                                         Strides4 vs, bool v_vec, Launch p,
                                                         acc* __restrict__ state) {
  constexpr int kTile = TileSize<acc>::value, kStride = Padded<D>::kStride;
  static_assert(StateAccumulator<acc, D, true>::kScratch <= 2 * kTile * kStride, "flush scratch");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc* k_tile = reinterpret_cast<acc*>(smem_raw);
  acc* v_tile = k_tile + kTile * kStride;
  const int64_t bh = blockIdx.x;
  const HeadView<scalar_t> kh = head_view(k, ks, bh, p.heads), vh = head_view(v, vs, bh, p.heads);
  StateAccumulator<acc, D, /*kOnesRow=*/true> sum;
  sum.zero();
  const int64_t tiles = (p.tokens + kTile - 1) / kTile;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t n0 = tile * kTile;
    const int len = static_cast<int>(p.tokens - n0 < kTile ? p.tokens - n0 : kTile);
    load_tile<scalar_t, acc, D, true>(kh, k_vec, p.d, n0, len, k_tile);
    load_tile<scalar_t, acc, D, false>(vh, v_vec, p.d, n0, len, v_tile);
    __syncthreads();
    sum.add_tile(v_tile, k_tile, len);
    __syncthreads();
  }
  sum.template flush<kAtomic>(k_tile, state + state_offset<D, kAtomic>(bh));
}

// out_n = vk relu(q_n) / (ksum . relu(q_n) + eps): one token per thread, the state in shared memory.
template <typename scalar_t, typename acc, int D>
__global__ void __launch_bounds__(kThreads) output_kernel(const scalar_t* __restrict__ q, Strides4 qs,
                                                          scalar_t* __restrict__ out, Strides4 os, Launch p,
                                                          const acc* __restrict__ state, acc eps) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc* st = reinterpret_cast<acc*>(smem_raw);
  const int64_t bh = blockIdx.x;
  load_state<acc, D>(state + bh * (D + 1) * D, st);
  const HeadView<scalar_t> qh = head_view(q, qs, bh, p.heads);
  scalar_t* oh = head_out(out, os, bh, p.heads);
  for (int64_t n = blockIdx.y * (int64_t)kThreads + threadIdx.x; n < p.tokens; n += (int64_t)gridDim.y * kThreads) {
    acc rq[D];
#pragma unroll
    for (int c = 0; c < D; ++c) rq[c] = c < p.d ? relu(static_cast<acc>(qh.at(c, n))) : acc(0);
    const acc inv_den = acc(1) / (dot_row<acc, D>(st + D * D, rq) + eps);
#pragma unroll
    for (int i = 0; i < D; ++i)
      if (i < p.d) oh[i * os.dim2 + n * os.dim3] = static_cast<scalar_t>(dot_row<acc, D>(st + i * D, rq) * inv_den);
  }
}

// dq per token (one per thread), then the state's gradient [dvk; dksum] summed like state_kernel.
template <typename scalar_t, typename acc, int D, bool kAtomic>
__global__ void __launch_bounds__(kThreads) query_kernel(const scalar_t* __restrict__ q, Strides4 qs,
                                                         const scalar_t* __restrict__ grad, Strides4 gs,
                                                         scalar_t* __restrict__ dq, Strides4 dqs, Launch p,
                                                         const acc* __restrict__ state, acc eps,
                                                         acc* __restrict__ dstate) {
  constexpr int kTile = TileSize<acc>::value, kStride = Padded<D>::kStride;
  static_assert(StateAccumulator<acc, D, false>::kScratch <= 2 * kTile * kStride, "flush scratch");
  static_assert(kTile == kThreads, "query_kernel: one token of the tile per thread");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc* st = reinterpret_cast<acc*>(smem_raw);  // [vk; ksum]
  acc* dn_tile = st + (D + 1) * D;             // [G / den, dden] per token
  acc* q_tile = dn_tile + kTile * kStride;     // relu(q) per token
  const int64_t bh = blockIdx.x;
  load_state<acc, D>(state + bh * (D + 1) * D, st);
  const HeadView<scalar_t> qh = head_view(q, qs, bh, p.heads), gh = head_view(grad, gs, bh, p.heads);
  scalar_t* dqh = head_out(dq, dqs, bh, p.heads);
  StateAccumulator<acc, D, /*kOnesRow=*/false> sum;
  sum.zero();
  const int64_t tiles = (p.tokens + kTile - 1) / kTile;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t n0 = tile * kTile;
    const int len = static_cast<int>(p.tokens - n0 < kTile ? p.tokens - n0 : kTile);
    const int t = threadIdx.x;
    if (t < len) {
      const int64_t n = n0 + t;
      acc rq[D], w[D];
#pragma unroll
      for (int c = 0; c < D; ++c) {
        rq[c] = c < p.d ? relu(static_cast<acc>(qh.at(c, n))) : acc(0);
        w[c] = acc(0);
      }
      const acc inv_den = acc(1) / (dot_row<acc, D>(st + D * D, rq) + eps);
      acc* dn_row = dn_tile + t * kStride;
#pragma unroll
      for (int i = 0; i < D; i += 4) {
        acc g[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          g[u] = i + u < p.d ? static_cast<acc>(gh.at(i + u, n)) : acc(0);
#pragma unroll
          for (int j = 0; j < D; j += 4) {  // w += g_i vk[i, :], i.e. w = vk^T G
            const Four<acc> r = load4(st + (i + u) * D + j);
            w[j] += g[u] * r.x;
            w[j + 1] += g[u] * r.y;
            w[j + 2] += g[u] * r.z;
            w[j + 3] += g[u] * r.w;
          }
        }
        store4(dn_row + i, g[0] * inv_den, g[1] * inv_den, g[2] * inv_den, g[3] * inv_den);
      }
      acc s = acc(0);
#pragma unroll
      for (int c = 0; c < D; ++c) s += w[c] * rq[c];
      const acc dden = -(s * inv_den) * inv_den;
      dn_row[D] = dden;
#pragma unroll
      for (int c = 0; c < D; ++c) {
        if (c < p.d) {
          const acc value = w[c] * inv_den + st[D * D + c] * dden;
          dqh[c * dqs.dim2 + n * dqs.dim3] = static_cast<scalar_t>(rq[c] > acc(0) ? value : acc(0));
        }
      }
      acc* q_row = q_tile + t * kStride;
#pragma unroll
      for (int c = 0; c < D; c += 4) store4(q_row + c, rq[c], rq[c + 1], rq[c + 2], rq[c + 3]);
    }
    __syncthreads();
    sum.add_tile(dn_tile, q_tile, len);
    __syncthreads();
  }
  sum.template flush<kAtomic>(dn_tile, dstate + state_offset<D, kAtomic>(bh));
}

// dv_m = dvk relu(k_m), dk_m = 1[k_m > 0] (dvk^T v_m + dksum): one token per thread.
template <typename scalar_t, typename acc, int D>
__global__ void __launch_bounds__(kThreads) key_kernel(const scalar_t* __restrict__ k, Strides4 ks,
                                                       const scalar_t* __restrict__ v, Strides4 vs,
                                                       scalar_t* __restrict__ dk, Strides4 dks,
                                                       scalar_t* __restrict__ dv, Strides4 dvs, Launch p,
                                                       const acc* __restrict__ dstate) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc* dst = reinterpret_cast<acc*>(smem_raw);  // [dvk; dksum]
  const int64_t bh = blockIdx.x;
  load_state<acc, D>(dstate + bh * (D + 1) * D, dst);
  const HeadView<scalar_t> kh = head_view(k, ks, bh, p.heads), vh = head_view(v, vs, bh, p.heads);
  scalar_t* dkh = head_out(dk, dks, bh, p.heads);
  scalar_t* dvh = head_out(dv, dvs, bh, p.heads);
  for (int64_t m = blockIdx.y * (int64_t)kThreads + threadIdx.x; m < p.tokens; m += (int64_t)gridDim.y * kThreads) {
    acc rk[D], g[D];
#pragma unroll
    for (int c = 0; c < D; ++c) {
      rk[c] = c < p.d ? relu(static_cast<acc>(kh.at(c, m))) : acc(0);
      g[c] = dst[D * D + c];  // dksum
    }
#pragma unroll
    for (int i = 0; i < D; ++i) {
      if (i < p.d) {
        dvh[i * dvs.dim2 + m * dvs.dim3] = static_cast<scalar_t>(dot_row<acc, D>(dst + i * D, rk));
        const acc vi = static_cast<acc>(vh.at(i, m));
#pragma unroll
        for (int j = 0; j < D; j += 4) {  // g += v_i dvk[i, :], i.e. dvk^T v
          const Four<acc> r = load4(dst + i * D + j);
          g[j] += vi * r.x;
          g[j + 1] += vi * r.y;
          g[j + 2] += vi * r.z;
          g[j + 3] += vi * r.w;
        }
      }
    }
#pragma unroll
    for (int c = 0; c < D; ++c)
      if (c < p.d) dkh[c * dks.dim2 + m * dks.dim3] = static_cast<scalar_t>(rk[c] > acc(0) ? g[c] : acc(0));
  }
}

// ---- host side ------------------------------------------------------------------------------

bool use_composite(const at::Tensor& q, const AttentionGeometry& geo) {
  return geo.dim > kMaxFusedCudaHeadDim || q.scalar_type() == at::kDouble;
}

// Blocks per head along the tokens: enough blocks in all to fill the GPU a few times over.
int64_t splits_for(const AttentionGeometry& geo, int64_t tile) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = (geo.tokens + tile - 1) / tile;
  const int64_t wanted = (sms * 8 + geo.heads_total() - 1) / geo.heads_total();
  return std::max<int64_t>(1, std::min<int64_t>({tiles, wanted, 65535}));
}

// Dynamic shared memory above the default 48 KB must be allowed per kernel and device. The
// attribute lasts for the process, so it is set once per (kernel, device) and size, not on every
// launch (a driver call each time).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // (kernel, device) -> bytes allowed
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), c10::cuda::current_device()};
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = allowed.find(key);
  if (found != allowed.end() && found->second >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  allowed[key] = bytes;
}

// A per-head (D+1) x D sum over the blocks of each head's token splits; `launch(out, atomic)`
// runs the kernel that flushes into `out`. One split: each block stores its head's state.
// Several: they add into one zeroed state with float atomics, whose order (so the rounding)
// varies from run to run; under torch.use_deterministic_algorithms(True) each block stores its
// own slot instead and sum_split_slots adds the slots in split order (one more small kernel,
// heads x splits x (D+1) x D floats of workspace).
template <typename acc, int D, typename LaunchFn>
at::Tensor sum_over_splits(const at::Tensor& like, const AttentionGeometry& geo, int64_t splits, cudaStream_t stream,
                           LaunchFn launch) {
  const auto options = like.options().dtype(c10::CppTypeToScalarType<acc>::value);
  const int64_t heads = geo.heads_total();
  if (splits == 1) {
    at::Tensor state = at::empty({heads, D + 1, D}, options);
    launch(state, /*atomic=*/false);
    return state;
  }
  if (!at::globalContext().deterministicAlgorithms()) {
    at::Tensor state = at::zeros({heads, D + 1, D}, options);
    launch(state, /*atomic=*/true);
    return state;
  }
  const at::Tensor slots = at::empty({heads, splits, D + 1, D}, options);
  launch(slots, /*atomic=*/false);
  at::Tensor state = at::empty({heads, D + 1, D}, options);
  sum_split_slots<acc, D><<<static_cast<unsigned int>(heads), kThreads, 0, stream>>>(
      slots.const_data_ptr<acc>(), splits, state.mutable_data_ptr<acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return state;
}

template <typename scalar_t, typename acc, int D>
at::Tensor compute_state(const at::Tensor& k, const at::Tensor& v, const AttentionGeometry& geo, Launch p,
                         cudaStream_t stream) {
  constexpr int kTile = TileSize<acc>::value;
  const size_t smem = 2 * kTile * Padded<D>::kStride * sizeof(acc);
  const int64_t splits = splits_for(geo, kTile);
  const dim3 grid(static_cast<unsigned int>(geo.heads_total()), static_cast<unsigned int>(splits));
  return sum_over_splits<acc, D>(k, geo, splits, stream, [&](const at::Tensor& out, bool atomic) {
    DCAE_BOOL_SWITCH(atomic, kAtomic, [&] {
      auto kernel = state_kernel<scalar_t, acc, D, kAtomic>;
      allow_shared_memory(kernel, smem);
      kernel<<<grid, kThreads, smem, stream>>>(k.const_data_ptr<scalar_t>(), strides_of(k), vector_loads_ok(k),
                                               v.const_data_ptr<scalar_t>(), strides_of(v), vector_loads_ok(v), p,
                                               out.mutable_data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void check_grid(const AttentionGeometry& geo) {
  DCAE_CHECK_ARG(geo.heads_total() <= std::numeric_limits<int32_t>::max(), "q",
                 "batch * heads = ", geo.heads_total(), " exceeds the CUDA grid limit");
}

// The fused kernels on float32 / float16 / bfloat16; float64 goes to the composite before this.
template <typename scalar_t>
void forward_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps,
                   const AttentionGeometry& geo, at::Tensor& out) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    TORCH_CHECK(false, "dcae_ext: linear_attention has no fused CUDA kernel for float64");
  } else {
    using acc = acc_t<scalar_t>;
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const Launch p{static_cast<int>(geo.heads), static_cast<int>(geo.dim), geo.tokens};
    DCAE_HEAD_DIM_SWITCH(geo.dim, D, [&] {
      const at::Tensor state = compute_state<scalar_t, acc, D>(k, v, geo, p, stream);
      const size_t smem = (D + 1) * D * sizeof(acc);
      const dim3 grid(static_cast<unsigned int>(geo.heads_total()),
                      static_cast<unsigned int>(splits_for(geo, kThreads)));
      output_kernel<scalar_t, acc, D><<<grid, kThreads, smem, stream>>>(
          q.const_data_ptr<scalar_t>(), strides_of(q), out.mutable_data_ptr<scalar_t>(), strides_of(out), p,
          state.const_data_ptr<acc>(), static_cast<acc>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

template <typename scalar_t>
void backward_fused(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    double eps, const AttentionGeometry& geo, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    TORCH_CHECK(false, "dcae_ext: linear_attention has no fused CUDA kernel for float64");
  } else {
    using acc = acc_t<scalar_t>;
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const Launch p{static_cast<int>(geo.heads), static_cast<int>(geo.dim), geo.tokens};
    DCAE_HEAD_DIM_SWITCH(geo.dim, D, [&] {
      constexpr int kTile = TileSize<acc>::value;
      const at::Tensor state = compute_state<scalar_t, acc, D>(k, v, geo, p, stream);

      const size_t query_smem = ((D + 1) * D + 2 * kTile * Padded<D>::kStride) * sizeof(acc);
      const int64_t query_splits = splits_for(geo, kTile);
      const dim3 query_grid(static_cast<unsigned int>(geo.heads_total()), static_cast<unsigned int>(query_splits));
      const auto launch_query = [&](const at::Tensor& dstate_out, bool atomic) {
        DCAE_BOOL_SWITCH(atomic, kAtomic, [&] {
          auto query = query_kernel<scalar_t, acc, D, kAtomic>;
          allow_shared_memory(query, query_smem);
          query<<<query_grid, kThreads, query_smem, stream>>>(
              q.const_data_ptr<scalar_t>(), strides_of(q), grad_out.const_data_ptr<scalar_t>(),
              strides_of(grad_out), dq.mutable_data_ptr<scalar_t>(), strides_of(dq), p,
              state.const_data_ptr<acc>(), static_cast<acc>(eps), dstate_out.mutable_data_ptr<acc>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      };
      const at::Tensor dstate = sum_over_splits<acc, D>(q, geo, query_splits, stream, launch_query);

      const size_t key_smem = (D + 1) * D * sizeof(acc);
      const dim3 key_grid(static_cast<unsigned int>(geo.heads_total()),
                          static_cast<unsigned int>(splits_for(geo, kThreads)));
      key_kernel<scalar_t, acc, D><<<key_grid, kThreads, key_smem, stream>>>(
          k.const_data_ptr<scalar_t>(), strides_of(k), v.const_data_ptr<scalar_t>(), strides_of(v),
          dk.mutable_data_ptr<scalar_t>(), strides_of(dk), dv.mutable_data_ptr<scalar_t>(), strides_of(dv), p,
          dstate.const_data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

at::Tensor linear_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps) {
  const AttentionGeometry geo = check_linear_attention_args(q, k, v, eps);
  DCAE_CHECK_DEVICE_TYPE(q, "q", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(q.device());
  if (use_composite(q, geo)) return linear_attention_composite(q, k, v, eps);
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  check_grid(geo);
  DCAE_DISPATCH_FLOATING(q.scalar_type(), "dcae_ext_linear_attention_cuda",
                         [&] { forward_fused<scalar_t>(q, k, v, eps, geo, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_cuda(const at::Tensor& grad_out,
                                                                              const at::Tensor& q,
                                                                              const at::Tensor& k,
                                                                              const at::Tensor& v, double eps) {
  const AttentionGeometry geo = check_linear_attention_args(q, k, v, eps, grad_out);
  DCAE_CHECK_DEVICE_TYPE(q, "q", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(q.device());
  if (use_composite(q, geo)) return linear_attention_backward_composite(grad_out, q, k, v, eps);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (dq.numel() == 0) return {dq, dk, dv};
  check_grid(geo);
  DCAE_DISPATCH_FLOATING(q.scalar_type(), "dcae_ext_linear_attention_backward_cuda",
                         [&] { backward_fused<scalar_t>(grad_out, q, k, v, eps, geo, dq, dk, dv); });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcae_ext, CUDA, m) {
  m.impl("linear_attention", &linear_attention_cuda);
  m.impl("_linear_attention_backward", &linear_attention_backward_cuda);
}

}  // namespace dcae_ext
