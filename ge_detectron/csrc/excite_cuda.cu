// CUDA kernels of the ge_detectron excite operators (schemas in excite.cpp).
//
// Forward: one element-wise pass, 16-byte loads and stores (VEC elements per thread) when the inner
// dimension and the pointers allow it; the gate sigmoid(g) is recomputed from g (small, cached) rather
// than materialised at full size.
// Backward, NCHW: one block per gate row (n, c, i), which writes grad_x (and grad_shortcut) and sums
// grad * x per column in registers, then per gate cell from shared memory, in an order fixed by the
// launch shape: deterministic, no atomics. Backward, channels_last: each thread sums one cell's columns
// of one row for VEC channels and adds that to a float accumulator with atomicAdd (not bitwise
// deterministic: it raises under torch.use_deterministic_algorithms(True)), then a small kernel turns
// the accumulator into grad_g.
// Indices are 32-bit (tensors must have fewer than 2^31 elements).
#include "excite.h"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

namespace ge_detectron {
namespace {

using at::Tensor;
using at::cuda::detail::IntDivider;

template <typename T>
using acc_type = at::opmath_type<T>;

constexpr int kThreads = 256;

// VEC consecutive elements, moved as one aligned access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T>
constexpr int wide_vec() {
  return 16 / static_cast<int>(sizeof(T));
}

template <typename A>
__device__ __forceinline__ A sigmoid(A v) {
  if constexpr (std::is_same_v<A, double>) {
    return 1.0 / (1.0 + ::exp(-v));
  } else {
    return 1.f / (1.f + ::expf(-v));
  }
}

// Sizes, nearest scales and g's strides, passed to every kernel.
struct Dims {
  int N, C, H, W, h, w;
  float scale_h, scale_w;
  int64_t g0, g1, g2, g3;

  Dims(const Tensor& x, const Tensor& g)
      : N(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), h(g.size(2)), w(g.size(3)),
        scale_h(nearest_scale(h, H)), scale_w(nearest_scale(w, W)),
        g0(g.stride(0)), g1(g.stride(1)), g2(g.stride(2)), g3(g.stride(3)) {}

  __device__ int64_t g_offset(int n, int c, int i, int j) const {
    return n * g0 + c * g1 + i * g2 + j * g3;
  }
  __device__ int src_row(int y) const {
    return static_cast<int>(nearest_source(y, scale_h, h));
  }
  __device__ int src_col(int x) const {
    return static_cast<int>(nearest_source(x, scale_w, w));
  }
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

// Flat index -> (a0, a1, a2, n), the dimensions innermost first with the innermost counted in packs:
// the forward's NCHW (W / VEC, H, C) or NHWC (C / VEC, W, H), the channels_last backward's (C / VEC, w, H).
struct Decoder {
  IntDivider<uint32_t> d0, d1, d2;

  __device__ void operator()(uint32_t e, int& a0, int& a1, int& a2, int& n) const {
    const auto q0 = d0.divmod(e), q1 = d1.divmod(q0.div), q2 = d2.divmod(q1.div);
    a0 = q0.mod;
    a1 = q1.mod;
    a2 = q2.mod;
    n = q2.div;
  }
};

template <typename T, typename G, bool RESIDUAL, int VEC>
__global__ void __launch_bounds__(kThreads) excite_forward_kernel(const T* __restrict__ x, const G* __restrict__ g,
                                                                   const T* __restrict__ shortcut, T* __restrict__ out,
                                                                   Dims d, Decoder decode, bool channels_last,
                                                                   uint32_t packs) {
  using acc_t = acc_type<T>;
  for (uint32_t p = blockIdx.x * blockDim.x + threadIdx.x; p < packs; p += gridDim.x * blockDim.x) {
    const uint32_t e = p * VEC;
    int a0, a1, a2, n;
    decode(p, a0, a1, a2, n);
    a0 *= VEC;  // the innermost coordinate of the pack's first element
    acc_t gate[VEC];
    if (channels_last) {  // (c, col, y): VEC channels of one pixel
      const int64_t cell = d.g_offset(n, a0, d.src_row(a2), d.src_col(a1));
#pragma unroll
      for (int k = 0; k < VEC; ++k) gate[k] = sigmoid(static_cast<acc_t>(g[cell + k * d.g1]));
    } else {  // (col, y, c): VEC columns of one row, usually all in one gate cell
      const int64_t row = d.g_offset(n, a2, d.src_row(a1), 0);
      const int first = d.src_col(a0), last = d.src_col(a0 + VEC - 1);
      if (first == last) {
        const acc_t s = sigmoid(static_cast<acc_t>(g[row + first * d.g3]));
#pragma unroll
        for (int k = 0; k < VEC; ++k) gate[k] = s;
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) gate[k] = sigmoid(static_cast<acc_t>(g[row + d.src_col(a0 + k) * d.g3]));
      }
    }
    const Pack<T, VEC> xv = load<T, VEC>(x + e);
    Pack<T, VEC> sv;
    if constexpr (RESIDUAL) sv = load<T, VEC>(shortcut + e);
    Pack<T, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      acc_t y = static_cast<acc_t>(xv.v[k]) * gate[k];
      if constexpr (RESIDUAL) {
        y += static_cast<acc_t>(sv.v[k]);
        y = y < 0 ? acc_t(0) : y;
      }
      ov.v[k] = static_cast<T>(y);
    }
    store<T, VEC>(out + e, ov);
  }
}

// grad_x, grad_shortcut for VEC elements, and m * x added to acc (m: grad_out, masked by out > 0).
template <typename T, bool RESIDUAL, int VEC>
__device__ __forceinline__ void backward_pack(int64_t e, const T* __restrict__ grad_out, const T* __restrict__ out,
                                              const T* __restrict__ x, T* __restrict__ grad_x,
                                              T* __restrict__ grad_shortcut, const acc_type<T>* gate,
                                              acc_type<T>* acc) {
  using acc_t = acc_type<T>;
  const Pack<T, VEC> gov = load<T, VEC>(grad_out + e), xv = load<T, VEC>(x + e);
  Pack<T, VEC> ov, gxv, gsv;
  if constexpr (RESIDUAL) ov = load<T, VEC>(out + e);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    acc_t m = static_cast<acc_t>(gov.v[k]);
    if constexpr (RESIDUAL) {
      m = static_cast<acc_t>(ov.v[k]) > 0 ? m : acc_t(0);
      gsv.v[k] = static_cast<T>(m);
    }
    gxv.v[k] = static_cast<T>(m * gate[k]);
    acc[k] += m * static_cast<acc_t>(xv.v[k]);
  }
  store<T, VEC>(grad_x + e, gxv);
  if constexpr (RESIDUAL) store<T, VEC>(grad_shortcut + e, gsv);
}

// NCHW backward, one block (blockDim.x x blockDim.y threads) per gate row (n, c, i). Shared memory:
// the row's w gate values, then blockDim.y x W column sums.
template <typename T, typename G, bool RESIDUAL, int VEC>
__global__ void excite_backward_nchw_kernel(const T* __restrict__ grad_out, const T* __restrict__ out,
                                            const T* __restrict__ x, const G* __restrict__ g, T* __restrict__ grad_x,
                                            T* __restrict__ grad_shortcut, G* __restrict__ grad_g, Dims d,
                                            Dims grad_g_dims) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char shared[];
  acc_t* sig = reinterpret_cast<acc_t*>(shared);
  acc_t* colsum = sig + d.w;
  const int i = blockIdx.x % d.h, nc = blockIdx.x / d.h, n = nc / d.C, c = nc % d.C;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  for (int j = tid; j < d.w; j += threads) sig[j] = sigmoid(static_cast<acc_t>(g[d.g_offset(n, c, i, j)]));
  const int y0 = nearest_first(i, d.scale_h, d.h, d.H), y1 = nearest_first(i + 1, d.scale_h, d.h, d.H);
  __syncthreads();

  for (int col = threadIdx.x * VEC; col < d.W; col += blockDim.x * VEC) {
    acc_t gate[VEC], acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      gate[k] = sig[d.src_col(col + k)];
      acc[k] = 0;
    }
    for (int y = y0 + threadIdx.y; y < y1; y += blockDim.y) {
      backward_pack<T, RESIDUAL, VEC>((static_cast<int64_t>(nc) * d.H + y) * d.W + col, grad_out, out, x, grad_x,
                                      grad_shortcut, gate, acc);
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) colsum[threadIdx.y * d.W + col + k] = acc[k];
  }
  __syncthreads();

  for (int j = tid; j < d.w; j += threads) {
    const int x0 = nearest_first(j, d.scale_w, d.w, d.W), x1 = nearest_first(j + 1, d.scale_w, d.w, d.W);
    acc_t sum = 0;
    for (int t = 0; t < static_cast<int>(blockDim.y); ++t)
      for (int col = x0; col < x1; ++col) sum += colsum[t * d.W + col];
    grad_g[grad_g_dims.g_offset(n, c, i, j)] = static_cast<G>(sum * sig[j] * (1 - sig[j]));
  }
}

// channels_last backward: one thread per (n, y, gate column j, pack of VEC channels), walking the
// columns of cell (i(y), j) in row y; its sums go to dsum (N, h, w, C) with atomicAdd.
template <typename T, typename G, bool RESIDUAL, int VEC>
__global__ void __launch_bounds__(kThreads) excite_backward_cl_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ out, const T* __restrict__ x, const G* __restrict__ g,
    T* __restrict__ grad_x, T* __restrict__ grad_shortcut, acc_type<T>* __restrict__ dsum, Dims d, Decoder decode,
    uint32_t items) {
  using acc_t = acc_type<T>;
  for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < items; t += gridDim.x * blockDim.x) {
    int pack, j, y, n;
    decode(t, pack, j, y, n);
    const int c0 = pack * VEC, i = d.src_row(y);
    acc_t gate[VEC], acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      gate[k] = sigmoid(static_cast<acc_t>(g[d.g_offset(n, c0 + k, i, j)]));
      acc[k] = 0;
    }
    const int x0 = nearest_first(j, d.scale_w, d.w, d.W), x1 = nearest_first(j + 1, d.scale_w, d.w, d.W);
    for (int col = x0; col < x1; ++col) {
      backward_pack<T, RESIDUAL, VEC>((static_cast<int64_t>(n * d.H + y) * d.W + col) * d.C + c0, grad_out, out, x,
                                      grad_x, grad_shortcut, gate, acc);
    }
    acc_t* cell = dsum + (static_cast<int64_t>(n * d.h + i) * d.w + j) * d.C + c0;
#pragma unroll
    for (int k = 0; k < VEC; ++k) atomicAdd(cell + k, acc[k]);
  }
}

// grad_g = dsum * sigmoid'(g), over g's elements in (n, c, i, j) order.
template <typename G, typename A>
__global__ void __launch_bounds__(kThreads) excite_grad_g_kernel(const G* __restrict__ g, const A* __restrict__ dsum,
                                                                  G* __restrict__ grad_g, Dims d, Dims grad_g_dims,
                                                                  uint32_t total) {
  for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
    const int j = t % d.w, i = t / d.w % d.h, c = t / d.w / d.h % d.C, n = t / d.w / d.h / d.C;
    const A s = sigmoid(static_cast<A>(g[d.g_offset(n, c, i, j)]));
    const A sum = dsum[(static_cast<int64_t>(n * d.h + i) * d.w + j) * d.C + c];
    grad_g[grad_g_dims.g_offset(n, c, i, j)] = static_cast<G>(sum * s * (1 - s));
  }
}

// ATen/cuda/CUDAContext.h is not included: it needs the cuBLAS / cuSPARSE headers, which a minimal
// CUDA toolkit lacks. The runtime API gives the two device attributes used here.
int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

int grid_for(int64_t items) {
  const int64_t resident = static_cast<int64_t>(device_attribute(cudaDevAttrMultiProcessorCount)) * (2048 / kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, resident)));
}

bool aligned16(const Tensor& t) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// The forward's decoder of a pack index over x's layout.
Decoder decoder_for(const Dims& d, bool channels_last, int vec) {
  using D = IntDivider<uint32_t>;
  return channels_last ? Decoder{D(d.C / vec), D(d.W), D(d.H)} : Decoder{D(d.W / vec), D(d.H), D(d.C)};
}

void check_32bit_indexing(const char* op, const Tensor& x) {
  TORCH_CHECK(x.numel() <= std::numeric_limits<int32_t>::max(), op,
              ": the CUDA kernels index with 32 bits; x of shape ", x.sizes(), " has more than 2^31 - 1 elements");
}

Tensor forward(const char* op, const Tensor& x_in, const Tensor& g, const Tensor& shortcut_in) {
  check_excite_inputs(op, x_in, g);
  const bool residual = shortcut_in.defined();
  if (residual) check_like_x(op, "shortcut", shortcut_in, x_in);
  check_32bit_indexing(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto format = excite_memory_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const Tensor x = x_in.contiguous(format);
  const Tensor shortcut = residual ? shortcut_in.contiguous(format) : Tensor();
  Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  if (x.numel() == 0) return out;
  const Dims d(x, g);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_excite_types(x, g, [&](auto x_tag, auto g_tag) {
    using T = typename decltype(x_tag)::type;
    using G = typename decltype(g_tag)::type;
    constexpr int V = wide_vec<T>();
    const bool wide = (cl ? d.C : d.W) % V == 0 && aligned16(x) && aligned16(shortcut) && aligned16(out);
    const int vec = wide ? V : 1;
    const uint32_t packs = x.numel() / vec;
    const Decoder decode = decoder_for(d, cl, vec);
    const T* sc = residual ? shortcut.data_ptr<T>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<grid_for(packs), kThreads, 0, stream>>>(x.data_ptr<T>(), g.data_ptr<G>(), sc, out.data_ptr<T>(), d,
                                                       decode, cl, packs);
    };
    if (residual) {
      wide ? launch(excite_forward_kernel<T, G, true, V>) : launch(excite_forward_kernel<T, G, true, 1>);
    } else {
      wide ? launch(excite_forward_kernel<T, G, false, V>) : launch(excite_forward_kernel<T, G, false, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Launches the NCHW backward: blockDim.x covers a row's packs (up to 256 threads), blockDim.y splits the
// gate row's rows so a block has up to 256 threads, fewer where the column sums would not fit.
template <typename T, typename G, bool RESIDUAL, int VEC>
void launch_backward_nchw(const char* op, const Dims& d, const Tensor& grad_out, const Tensor& out, const Tensor& x,
                          const Tensor& g, Tensor& grad_x, Tensor& grad_shortcut, Tensor& grad_g) {
  using acc_t = acc_type<T>;
  const auto kernel = excite_backward_nchw_kernel<T, G, RESIDUAL, VEC>;
  const int packs = d.W / VEC;
  const int bx = std::min(kThreads, (packs + 31) / 32 * 32);
  const int rows = (d.H + d.h - 1) / d.h + 1;  // the most rows a gate row can have
  const int64_t limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int64_t fit = (limit / static_cast<int64_t>(sizeof(acc_t)) - d.w) / d.W;
  TORCH_CHECK(fit >= 1, op, ": x of shape ", x.sizes(), " is too wide for the CUDA NCHW backward (its ", d.W,
              " column sums do not fit in shared memory); use channels_last");
  const int by = static_cast<int>(std::min<int64_t>({kThreads / bx, rows, fit}));
  const size_t smem = (d.w + static_cast<size_t>(by) * d.W) * sizeof(acc_t);
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<d.N * d.C * d.h, dim3(bx, by), smem, c10::cuda::getCurrentCUDAStream()>>>(
      grad_out.data_ptr<T>(), RESIDUAL ? out.data_ptr<T>() : nullptr, x.data_ptr<T>(), g.data_ptr<G>(),
      grad_x.data_ptr<T>(), RESIDUAL ? grad_shortcut.data_ptr<T>() : nullptr, grad_g.data_ptr<G>(), d,
      Dims(x, grad_g));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename G, bool RESIDUAL, int VEC>
void launch_backward_cl(const Dims& d, const Tensor& grad_out, const Tensor& out, const Tensor& x, const Tensor& g,
                        Tensor& grad_x, Tensor& grad_shortcut, Tensor& grad_g) {
  using acc_t = acc_type<T>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor dsum = at::zeros({d.N, d.h, d.w, d.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const uint32_t items = static_cast<uint32_t>(d.N) * d.H * d.w * (d.C / VEC);
  const Decoder decode{IntDivider<uint32_t>(d.C / VEC), IntDivider<uint32_t>(d.w), IntDivider<uint32_t>(d.H)};
  excite_backward_cl_kernel<T, G, RESIDUAL, VEC><<<grid_for(items), kThreads, 0, stream>>>(
      grad_out.data_ptr<T>(), RESIDUAL ? out.data_ptr<T>() : nullptr, x.data_ptr<T>(), g.data_ptr<G>(),
      grad_x.data_ptr<T>(), RESIDUAL ? grad_shortcut.data_ptr<T>() : nullptr, dsum.data_ptr<acc_t>(), d, decode, items);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const uint32_t total = g.numel();
  excite_grad_g_kernel<G, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
      g.data_ptr<G>(), dsum.data_ptr<acc_t>(), grad_g.data_ptr<G>(), d, Dims(x, grad_g), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor, Tensor> backward(const char* op, const Tensor& grad_out_in, const Tensor& out_in,
                                            const Tensor& x_in, const Tensor& g) {
  check_excite_inputs(op, x_in, g);
  check_like_x(op, "grad_out", grad_out_in, x_in);
  const bool residual = out_in.defined();
  if (residual) check_like_x(op, "out", out_in, x_in);
  check_32bit_indexing(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto format = excite_memory_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const Tensor x = x_in.contiguous(format);
  const Tensor grad_out = grad_out_in.contiguous(format);
  const Tensor out = residual ? out_in.contiguous(format) : Tensor();
  Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(format));
  Tensor grad_shortcut = residual ? at::empty(x.sizes(), x.options().memory_format(format)) : Tensor();
  Tensor grad_g = at::empty(g.sizes(), g.options().memory_format(excite_memory_format(g)));
  if (x.numel() == 0) return {grad_x, grad_g.zero_(), grad_shortcut};
  const Dims d(x, g);
  dispatch_excite_types(x, g, [&](auto x_tag, auto g_tag) {
    using T = typename decltype(x_tag)::type;
    using G = typename decltype(g_tag)::type;
    constexpr int V = wide_vec<T>();
    const bool wide = (cl ? d.C : d.W) % V == 0 && aligned16(x) && aligned16(grad_out) && aligned16(out) &&
                      aligned16(grad_x) && aligned16(grad_shortcut);
    if (cl) {
      at::Context::alertNotDeterministic("ge_detectron excite backward on CUDA with channels_last inputs");
      auto run = [&](auto launch) { launch(d, grad_out, out, x, g, grad_x, grad_shortcut, grad_g); };
      if (residual) {
        wide ? run(launch_backward_cl<T, G, true, V>) : run(launch_backward_cl<T, G, true, 1>);
      } else {
        wide ? run(launch_backward_cl<T, G, false, V>) : run(launch_backward_cl<T, G, false, 1>);
      }
    } else {
      auto run = [&](auto launch) { launch(op, d, grad_out, out, x, g, grad_x, grad_shortcut, grad_g); };
      if (residual) {
        wide ? run(launch_backward_nchw<T, G, true, V>) : run(launch_backward_nchw<T, G, true, 1>);
      } else {
        wide ? run(launch_backward_nchw<T, G, false, V>) : run(launch_backward_nchw<T, G, false, 1>);
      }
    }
  });
  return {grad_x, grad_g, grad_shortcut};
}

Tensor excite_cuda(const Tensor& x, const Tensor& g) {
  return forward("ge_detectron::excite", x, g, Tensor());
}

Tensor excite_residual_cuda(const Tensor& x, const Tensor& g, const Tensor& shortcut) {
  return forward("ge_detectron::excite_residual", x, g, shortcut);
}

std::tuple<Tensor, Tensor> excite_backward_cuda(const Tensor& grad_out, const Tensor& x, const Tensor& g) {
  const auto grads = backward("ge_detectron::excite_backward", grad_out, Tensor(), x, g);
  return {std::get<0>(grads), std::get<1>(grads)};
}

std::tuple<Tensor, Tensor, Tensor> excite_residual_backward_cuda(const Tensor& grad_out, const Tensor& out,
                                                                 const Tensor& x, const Tensor& g) {
  return backward("ge_detectron::excite_residual_backward", grad_out, out, x, g);
}

}  // namespace

TORCH_LIBRARY_IMPL(ge_detectron, CUDA, m) {
  m.impl("excite", excite_cuda);
  m.impl("excite_backward", excite_backward_cuda);
  m.impl("excite_residual", excite_residual_cuda);
  m.impl("excite_residual_backward", excite_residual_backward_cuda);
}

}  // namespace ge_detectron
