// CPU kernels of the ge_detectron excite operators (schemas in excite.cpp).
//
// Each kernel makes one pass over the full-size tensors. The gate sigmoid(up(g)) is never materialised
// at full size: a task keeps the sigmoid of the gate row it is on (expanded over a chunk of rows for
// NCHW, w x C for channels_last) and the inner loops are plain vectorised element-wise spans over it.
// The backward accumulates the g-gradient in the opmath type, each gate cell inside one task in a fixed
// order, so it is deterministic for both layouts and any number of threads.
#include "excite.h"
#include "float_convert.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace ge_detectron {
namespace {

using at::Tensor;

template <typename T>
using acc_type = at::opmath_type<T>;

// The spans below are plain loops over restrict pointers, written for the compiler's auto-vectoriser:
// at -O3 they compile to packed SIMD code for the build's baseline ISA (SSE2 on x86-64), float16 and
// bfloat16 included (float_convert.h). With GCC on x86-64 Linux they are also compiled for x86-64-v3
// (AVX2, FMA, F16C), picked at load time where the CPU has it: the float16/bfloat16 conversions are
// compute-bound at SSE2 width. ATen's Vectorized<> is not used: outside ATen's per-CPU-capability
// builds its generic fallback compiles to scalar code.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define GE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GE_SIMD_CLONES
#endif

// v where `keep`, else +0: a bit mask rather than a select, which keeps GCC from branching (and so
// from not vectorising) in the float16 loops.
inline float keep_or_zero(bool keep, float v) {
  return c10::bit_cast<float>(c10::bit_cast<uint32_t>(v) & mask_if(keep));
}
inline double keep_or_zero(bool keep, double v) {
  return c10::bit_cast<double>(c10::bit_cast<uint64_t>(v) & (uint64_t{0} - static_cast<uint64_t>(keep)));
}

// out = x * gate, or relu(x * gate + shortcut), over n consecutive elements.
template <typename T, bool RESIDUAL>
GE_SIMD_CLONES void excite_span(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ shortcut,
                                const acc_type<T>* __restrict__ gate, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc_type<T> y = to_opmath(x[k]) * gate[k];
    if constexpr (RESIDUAL) {
      y += to_opmath(shortcut[k]);
      y = keep_or_zero(!(y < 0), y);  // relu, NaN kept
    }
    out[k] = from_opmath<T>(y);
  }
}

// Backward of excite_span over n elements: with m = grad_out (RESIDUAL: grad_out where out > 0, else 0,
// which is also grad_shortcut), grad_x = m * gate and acc += m * x.
template <typename T, bool RESIDUAL>
GE_SIMD_CLONES void excite_backward_span(T* __restrict__ grad_x, T* __restrict__ grad_shortcut,
                                         const T* __restrict__ grad_out, const T* __restrict__ out,
                                         const T* __restrict__ x, const acc_type<T>* __restrict__ gate,
                                         acc_type<T>* __restrict__ acc, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc_type<T> m = to_opmath(grad_out[k]);
    if constexpr (RESIDUAL) {
      m = keep_or_zero(to_opmath(out[k]) > 0, m);
      grad_shortcut[k] = from_opmath<T>(m);
    }
    grad_x[k] = from_opmath<T>(m * gate[k]);
    acc[k] += m * to_opmath(x[k]);
  }
}

// dst = src over n elements (a loop the compiler vectorises inline, unlike a call to memcpy for a short row).
template <typename A>
void copy_to(A* __restrict__ dst, const A* __restrict__ src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}

// dst += src over n elements.
template <typename A>
void add_to(A* __restrict__ dst, const A* __restrict__ src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}

// The sum of v[0, n) in a fixed order, by 8 interleaved partial sums: a single running sum would be a
// chain of dependent adds (the compiler may not reorder float sums), slow for the long global cells.
template <typename A>
A sum8(const A* v, int64_t n) {
  A part[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) part[l] += v[k + l];
  for (int l = 0; k < n; ++k, ++l) part[l] += v[k];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Sizes and the nearest-resize index tables shared by the kernels.
struct Geometry {
  int64_t N, C, H, W, h, w;
  std::vector<int64_t> src_row, src_col;      // source row of each output row (H), column (W)
  std::vector<int64_t> row_first, col_first;  // first output row of each source row (h + 1), column (w + 1)

  Geometry(const Tensor& x, const Tensor& g)
      : N(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), h(g.size(2)), w(g.size(3)) {
    const float sh = nearest_scale(h, H), sw = nearest_scale(w, W);
    for (int64_t y = 0; y < H; ++y) src_row.push_back(nearest_source(y, sh, h));
    for (int64_t c = 0; c < W; ++c) src_col.push_back(nearest_source(c, sw, w));
    for (int64_t i = 0; i <= h; ++i) row_first.push_back(nearest_first(i, sh, h, H));
    for (int64_t j = 0; j <= w; ++j) col_first.push_back(nearest_first(j, sw, w, W));
  }
};

// Element (n, c, i, j) of a 4-D tensor of any strides.
template <typename T>
struct Strided4d {
  T* data;
  int64_t s0, s1, s2, s3;

  explicit Strided4d(const Tensor& t)
      : data(t.data_ptr<std::remove_const_t<T>>()),
        s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  T& operator()(int64_t n, int64_t c, int64_t i, int64_t j) const {
    return data[n * s0 + c * s1 + i * s2 + j * s3];
  }
};

template <typename acc_t, typename G>
acc_t gate_sigmoid(G logit) {
  return acc_t(1) / (acc_t(1) + std::exp(-to_opmath(logit)));
}

// Items per task such that a task covers about 32768 elements (ATen's at::internal::GRAIN_SIZE).
int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, elements_per_item));
}

// NCHW: the rows of a plane that read gate row i (a "band") are contiguous. A task takes whole bands
// and walks each in chunks of up to chunk_rows(W) rows, with the gate expanded once per band to that
// many rows, so that short rows (W = 7, 19, ...) still make long vectorised spans.
int64_t chunk_rows(int64_t W) {
  return std::max<int64_t>(1, 1024 / std::max<int64_t>(1, W));
}

// sigmoid of gate row (n, c, i), expanded to W columns and repeated `rows` times; sig gets the w cells.
template <typename acc_t, typename G>
void expand_gate_rows(const Geometry& geo, const Strided4d<const G>& g, int64_t nc, int64_t i, int64_t rows,
                      acc_t* sig, acc_t* gate) {
  for (int64_t j = 0; j < geo.w; ++j) sig[j] = gate_sigmoid<acc_t>(g(nc / geo.C, nc % geo.C, i, j));
  for (int64_t col = 0; col < geo.W; ++col) gate[col] = sig[geo.src_col[col]];
  for (int64_t r = 1; r < rows; ++r) copy_to(gate + r * geo.W, gate, geo.W);
}

template <typename T, typename G, bool RESIDUAL>
void forward_nchw(const Geometry& geo, const T* x, const Strided4d<const G>& g, const T* shortcut, T* out) {
  using acc_t = acc_type<T>;
  const int64_t H = geo.H, W = geo.W, chunk = chunk_rows(W);
  at::parallel_for(0, geo.N * geo.C * geo.h, grain(H * W / geo.h), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sig(geo.w), gate(chunk * W);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t nc = band / geo.h, i = band % geo.h, y0 = geo.row_first[i], y1 = geo.row_first[i + 1];
      expand_gate_rows(geo, g, nc, i, std::min(chunk, y1 - y0), sig.data(), gate.data());
      for (int64_t y = y0; y < y1; y += chunk) {
        const int64_t off = (nc * H + y) * W, n = std::min(chunk, y1 - y) * W;
        excite_span<T, RESIDUAL>(out + off, x + off, RESIDUAL ? shortcut + off : nullptr, gate.data(), n);
      }
    }
  });
}

template <typename T, typename G, bool RESIDUAL>
void forward_channels_last(const Geometry& geo, const T* x, const Strided4d<const G>& g, const T* shortcut,
                           T* out) {
  using acc_t = acc_type<T>;
  const int64_t C = geo.C, H = geo.H, W = geo.W;
  at::parallel_for(0, geo.N * H, grain(W * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gate(geo.w * C);  // [j][c]
    int64_t cached = -1;                 // n * h + i of the gate row in `gate`
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, i = geo.src_row[r % H];
      if (n * geo.h + i != cached) {
        cached = n * geo.h + i;
        for (int64_t j = 0; j < geo.w; ++j)
          for (int64_t c = 0; c < C; ++c) gate[j * C + c] = gate_sigmoid<acc_t>(g(n, c, i, j));
      }
      for (int64_t col = 0; col < W; ++col) {
        const int64_t off = (r * W + col) * C;
        excite_span<T, RESIDUAL>(out + off, x + off, RESIDUAL ? shortcut + off : nullptr,
                                 gate.data() + geo.src_col[col] * C, C);
      }
    }
  });
}

// NCHW backward, by bands as the forward: grad * x is summed per position of the chunk over the band's
// chunks, then per column over the chunk's rows, then per gate cell over its columns, in a fixed order.
template <typename T, typename G, bool RESIDUAL>
void backward_nchw(const Geometry& geo, const T* grad_out, const T* out, const T* x, const Strided4d<const G>& g,
                   T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  const int64_t H = geo.H, W = geo.W, chunk = chunk_rows(W);
  at::parallel_for(0, geo.N * geo.C * geo.h, grain(H * W / geo.h), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sig(geo.w), gate(chunk * W), acc(chunk * W);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t nc = band / geo.h, i = band % geo.h, y0 = geo.row_first[i], y1 = geo.row_first[i + 1];
      const int64_t rows = std::min(chunk, y1 - y0);
      expand_gate_rows(geo, g, nc, i, rows, sig.data(), gate.data());
      std::fill(acc.begin(), acc.begin() + rows * W, acc_t(0));
      for (int64_t y = y0; y < y1; y += chunk) {
        const int64_t off = (nc * H + y) * W, n = std::min(chunk, y1 - y) * W;
        excite_backward_span<T, RESIDUAL>(grad_x + off, RESIDUAL ? grad_shortcut + off : nullptr, grad_out + off,
                                          RESIDUAL ? out + off : nullptr, x + off, gate.data(), acc.data(), n);
      }
      for (int64_t r = 1; r < rows; ++r) add_to(acc.data(), acc.data() + r * W, W);  // column sums in row 0
      for (int64_t j = 0; j < geo.w; ++j) {
        const acc_t sum = sum8(acc.data() + geo.col_first[j], geo.col_first[j + 1] - geo.col_first[j]);
        grad_g(nc / geo.C, nc % geo.C, i, j) = from_opmath<G>(sum * sig[j] * (1 - sig[j]));
      }
    }
  });
}

// One task per (n, gate row, block of channels), accumulating the gate row's cells x channels.
template <typename T, typename G, bool RESIDUAL>
void backward_channels_last(const Geometry& geo, const T* grad_out, const T* out, const T* x,
                            const Strided4d<const G>& g, T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  const int64_t C = geo.C, H = geo.H, W = geo.W;
  // Whole pixels (all C channels) per task when the (n, gate row) pairs give every thread work, else
  // blocks of channels. The sums do not depend on the split: each channel of a cell is summed pixel by
  // pixel, in order.
  const int64_t splits = std::min((at::get_num_threads() + geo.N * geo.h - 1) / (geo.N * geo.h), (C + 15) / 16);
  const int64_t block = std::min(C, (C / std::max<int64_t>(splits, 1) + 15) / 16 * 16);
  const int64_t blocks = (C + block - 1) / block;
  at::parallel_for(0, geo.N * geo.h * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gate(geo.w * block), acc(geo.w * block);  // [j][channel in block]
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t % blocks) * block, i = (t / blocks) % geo.h, n = t / blocks / geo.h;
      const int64_t len = std::min(block, C - c0);
      for (int64_t j = 0; j < geo.w; ++j)
        for (int64_t c = 0; c < len; ++c) gate[j * len + c] = gate_sigmoid<acc_t>(g(n, c0 + c, i, j));
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t y = geo.row_first[i]; y < geo.row_first[i + 1]; ++y) {
        for (int64_t col = 0; col < W; ++col) {
          const int64_t off = ((n * H + y) * W + col) * C + c0, cell = geo.src_col[col] * len;
          excite_backward_span<T, RESIDUAL>(grad_x + off, RESIDUAL ? grad_shortcut + off : nullptr, grad_out + off,
                                            RESIDUAL ? out + off : nullptr, x + off, gate.data() + cell,
                                            acc.data() + cell, len);
        }
      }
      for (int64_t j = 0; j < geo.w; ++j) {
        for (int64_t c = 0; c < len; ++c) {
          const acc_t s = gate[j * len + c];
          grad_g(n, c0 + c, i, j) = from_opmath<G>(acc[j * len + c] * s * (1 - s));
        }
      }
    }
  });
}

// excite (shortcut undefined) or excite_residual.
Tensor forward(const char* op, const Tensor& x_in, const Tensor& g, const Tensor& shortcut_in) {
  check_excite_inputs(op, x_in, g);
  const bool residual = shortcut_in.defined();
  if (residual) check_like_x(op, "shortcut", shortcut_in, x_in);
  const auto format = excite_memory_format(x_in);
  const Tensor x = x_in.contiguous(format);
  const Tensor shortcut = residual ? shortcut_in.contiguous(format) : Tensor();
  Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  const Geometry geo(x, g);
  dispatch_excite_types(x, g, [&](auto x_tag, auto g_tag) {
    using T = typename decltype(x_tag)::type;
    using G = typename decltype(g_tag)::type;
    const Strided4d<const G> gv(g);
    const T* sc = residual ? shortcut.data_ptr<T>() : nullptr;
    const bool cl = format == at::MemoryFormat::ChannelsLast;
    if (residual) {
      (cl ? forward_channels_last<T, G, true> : forward_nchw<T, G, true>)(geo, x.data_ptr<T>(), gv, sc,
                                                                          out.data_ptr<T>());
    } else {
      (cl ? forward_channels_last<T, G, false> : forward_nchw<T, G, false>)(geo, x.data_ptr<T>(), gv, sc,
                                                                            out.data_ptr<T>());
    }
  });
  return out;
}

// excite_backward (out undefined) or excite_residual_backward: (grad_x, grad_g, grad_shortcut).
std::tuple<Tensor, Tensor, Tensor> backward(const char* op, const Tensor& grad_out_in, const Tensor& out_in,
                                            const Tensor& x_in, const Tensor& g) {
  check_excite_inputs(op, x_in, g);
  check_like_x(op, "grad_out", grad_out_in, x_in);
  const bool residual = out_in.defined();
  if (residual) check_like_x(op, "out", out_in, x_in);
  const auto format = excite_memory_format(x_in);
  const Tensor x = x_in.contiguous(format);
  const Tensor grad_out = grad_out_in.contiguous(format);
  const Tensor out = residual ? out_in.contiguous(format) : Tensor();
  Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(format));
  Tensor grad_shortcut = residual ? at::empty(x.sizes(), x.options().memory_format(format)) : Tensor();
  Tensor grad_g = at::empty(g.sizes(), g.options().memory_format(excite_memory_format(g)));
  const Geometry geo(x, g);
  dispatch_excite_types(x, g, [&](auto x_tag, auto g_tag) {
    using T = typename decltype(x_tag)::type;
    using G = typename decltype(g_tag)::type;
    const Strided4d<const G> gv(g);
    const Strided4d<G> grad_gv(grad_g);
    const T* o = residual ? out.data_ptr<T>() : nullptr;
    T* gsc = residual ? grad_shortcut.data_ptr<T>() : nullptr;
    const bool cl = format == at::MemoryFormat::ChannelsLast;
    if (residual) {
      (cl ? backward_channels_last<T, G, true> : backward_nchw<T, G, true>)(
          geo, grad_out.data_ptr<T>(), o, x.data_ptr<T>(), gv, grad_x.data_ptr<T>(), gsc, grad_gv);
    } else {
      (cl ? backward_channels_last<T, G, false> : backward_nchw<T, G, false>)(
          geo, grad_out.data_ptr<T>(), o, x.data_ptr<T>(), gv, grad_x.data_ptr<T>(), gsc, grad_gv);
    }
  });
  return {grad_x, grad_g, grad_shortcut};
}

Tensor excite_cpu(const Tensor& x, const Tensor& g) {
  return forward("ge_detectron::excite", x, g, Tensor());
}

Tensor excite_residual_cpu(const Tensor& x, const Tensor& g, const Tensor& shortcut) {
  return forward("ge_detectron::excite_residual", x, g, shortcut);
}

std::tuple<Tensor, Tensor> excite_backward_cpu(const Tensor& grad_out, const Tensor& x, const Tensor& g) {
  const auto grads = backward("ge_detectron::excite_backward", grad_out, Tensor(), x, g);
  return {std::get<0>(grads), std::get<1>(grads)};
}

std::tuple<Tensor, Tensor, Tensor> excite_residual_backward_cpu(const Tensor& grad_out, const Tensor& out,
                                                                const Tensor& x, const Tensor& g) {
  return backward("ge_detectron::excite_residual_backward", grad_out, out, x, g);
}

}  // namespace

TORCH_LIBRARY_IMPL(ge_detectron, CPU, m) {
  m.impl("excite", excite_cpu);
  m.impl("excite_backward", excite_backward_cpu);
  m.impl("excite_residual", excite_residual_cpu);
  m.impl("excite_residual_backward", excite_residual_backward_cpu);
}

}  // namespace ge_detectron
