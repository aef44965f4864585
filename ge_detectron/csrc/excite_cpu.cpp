// CPU kernels of the ge_detectron excite operators (entry points in excite.cpp).
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

// The gate of a span: an array with one value per element, or one value for all (a gate row of width 1).
template <typename A>
struct GateArray {
  const A* __restrict__ values;
  A operator[](int64_t k) const { return values[k]; }
  GateArray advanced(int64_t k) const { return {values + k}; }
};
template <typename A>
struct GateScalar {
  A value;
  A operator[](int64_t) const { return value; }
  GateScalar advanced(int64_t) const { return *this; }
};

// out = x * gate, or relu(x * gate + shortcut), over n consecutive elements.
template <typename T, bool RESIDUAL, typename Gate>
GE_SIMD_CLONES void excite_span_loop(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ shortcut,
                                     Gate gate, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc_type<T> y = to_opmath(x[k]) * gate[k];
    if constexpr (RESIDUAL) {
      y += to_opmath(shortcut[k]);
      y = keep_or_zero(!(y < 0), y);  // relu, NaN kept
    }
    out[k] = from_opmath<T>(y);
  }
}

// Backward of excite_span_loop over n elements: with m = grad_out (RESIDUAL: grad_out where out > 0, else
// 0, which is also grad_shortcut), grad_x = m * gate and acc += m * x.
template <typename T, bool RESIDUAL, typename Gate>
GE_SIMD_CLONES void excite_backward_span_loop(T* __restrict__ grad_x, T* __restrict__ grad_shortcut,
                                              const T* __restrict__ grad_out, const T* __restrict__ out,
                                              const T* __restrict__ x, Gate gate, acc_type<T>* __restrict__ acc,
                                              int64_t n) {
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

#ifdef GE_HAVE_F16C
// float16 where the CPU has F16C: blocks of kHalfBlock elements are converted to float (one instruction
// per 8 values), run through the float loop and converted back. The results are the same as the float16
// loop's, whose portable conversions cost about 15 instructions per 8 values and made float16 the
// slowest dtype by far (slower than eager ATen, which uses F16C).
constexpr int64_t kHalfBlock = 256;

template <bool RESIDUAL, typename Gate>
void excite_span_f16c(c10::Half* out, const c10::Half* x, const c10::Half* shortcut, Gate gate, int64_t n) {
  float xf[kHalfBlock], sf[kHalfBlock], of[kHalfBlock];
  for (int64_t k = 0; k < n; k += kHalfBlock) {
    const int64_t m = std::min(kHalfBlock, n - k);
    half_to_float_f16c(xf, x + k, m);
    if constexpr (RESIDUAL) half_to_float_f16c(sf, shortcut + k, m);
    excite_span_loop<float, RESIDUAL>(of, xf, sf, gate.advanced(k), m);
    float_to_half_f16c(out + k, of, m);
  }
}

template <bool RESIDUAL, typename Gate>
void excite_backward_span_f16c(c10::Half* grad_x, c10::Half* grad_shortcut, const c10::Half* grad_out,
                               const c10::Half* out, const c10::Half* x, Gate gate, float* acc, int64_t n) {
  float gof[kHalfBlock], of[kHalfBlock], xf[kHalfBlock], gxf[kHalfBlock], gsf[kHalfBlock];
  for (int64_t k = 0; k < n; k += kHalfBlock) {
    const int64_t m = std::min(kHalfBlock, n - k);
    half_to_float_f16c(gof, grad_out + k, m);
    if constexpr (RESIDUAL) half_to_float_f16c(of, out + k, m);
    half_to_float_f16c(xf, x + k, m);
    excite_backward_span_loop<float, RESIDUAL>(gxf, gsf, gof, of, xf, gate.advanced(k), acc + k, m);
    float_to_half_f16c(grad_x + k, gxf, m);
    if constexpr (RESIDUAL) float_to_half_f16c(grad_shortcut + k, gsf, m);
  }
}
#endif

template <typename T, bool RESIDUAL, typename Gate>
void excite_span(T* out, const T* x, const T* shortcut, Gate gate, int64_t n) {
#ifdef GE_HAVE_F16C
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (has_f16c()) return excite_span_f16c<RESIDUAL>(out, x, shortcut, gate, n);
  }
#endif
  excite_span_loop<T, RESIDUAL>(out, x, shortcut, gate, n);
}

template <typename T, bool RESIDUAL, typename Gate>
void excite_backward_span(T* grad_x, T* grad_shortcut, const T* grad_out, const T* out, const T* x, Gate gate,
                          acc_type<T>* acc, int64_t n) {
#ifdef GE_HAVE_F16C
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (has_f16c()) return excite_backward_span_f16c<RESIDUAL>(grad_x, grad_shortcut, grad_out, out, x, gate, acc, n);
  }
#endif
  excite_backward_span_loop<T, RESIDUAL>(grad_x, grad_shortcut, grad_out, out, x, gate, acc, n);
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

// The sigmoid of gate cell (i, j) of plane nc = n * C + c (NCHW kernels index planes).
template <typename acc_t, typename G>
acc_t cell_sigmoid(const Geometry& geo, const Strided4d<const G>& g, int64_t nc, int64_t i, int64_t j) {
  return gate_sigmoid<acc_t>(g(nc / geo.C, nc % geo.C, i, j));
}

// sigmoid of gate row (n, c, i), expanded to W columns and repeated `rows` times; sig gets the w cells.
template <typename acc_t, typename G>
void expand_gate_rows(const Geometry& geo, const Strided4d<const G>& g, int64_t nc, int64_t i, int64_t rows,
                      acc_t* sig, acc_t* gate) {
  for (int64_t j = 0; j < geo.w; ++j) sig[j] = cell_sigmoid<acc_t>(geo, g, nc, i, j);
  for (int64_t col = 0; col < geo.W; ++col) gate[col] = sig[geo.src_col[col]];
  for (int64_t r = 1; r < rows; ++r) copy_to(gate + r * geo.W, gate, geo.W);
}

// NCHW with a gate row of width 1 (global gates, and extents at least as wide as the map): a band is
// contiguous and has one gate value, so it is a span with a scalar gate. Small planes with a global gate
// (the 7x7 maps of the C4 head: 49 elements each) are grouped instead, up to kUniformChunk elements per
// span with the gate expanded over the group, so that the per-span cost is not paid every 49 elements.
constexpr int64_t kUniformChunk = 1024;

// Planes per span of the uniform NCHW path: 1 (a span per band) unless the gate is one value per plane.
int64_t planes_per_span(const Geometry& geo) {
  return geo.h == 1 ? std::max<int64_t>(1, kUniformChunk / (geo.H * geo.W)) : 1;
}

// sig[p - p0] = the sigmoid of plane p's one gate value for p in [p0, p1), and gate = each repeated over its plane.
template <typename acc_t, typename G>
void expand_plane_gates(const Geometry& geo, const Strided4d<const G>& g, int64_t p0, int64_t p1, acc_t* sig,
                        acc_t* gate) {
  const int64_t plane = geo.H * geo.W;
  for (int64_t p = p0; p < p1; ++p) {
    sig[p - p0] = cell_sigmoid<acc_t>(geo, g, p, 0, 0);
    std::fill_n(gate + (p - p0) * plane, plane, sig[p - p0]);
  }
}

template <typename T, typename G, bool RESIDUAL>
void forward_nchw_uniform(const Geometry& geo, const T* x, const Strided4d<const G>& g, const T* shortcut, T* out) {
  using acc_t = acc_type<T>;
  const int64_t group = planes_per_span(geo), plane = geo.H * geo.W;
  const auto span = [&](int64_t off, auto gate, int64_t n) {
    excite_span<T, RESIDUAL>(out + off, x + off, RESIDUAL ? shortcut + off : nullptr, gate, n);
  };
  if (group > 1) {
    at::parallel_for(0, geo.N * geo.C, grain(plane), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sig(group), gate(group * plane);
      for (int64_t p0 = begin; p0 < end; p0 += group) {
        const int64_t p1 = std::min(p0 + group, end);
        expand_plane_gates(geo, g, p0, p1, sig.data(), gate.data());
        span(p0 * plane, GateArray<acc_t>{gate.data()}, (p1 - p0) * plane);
      }
    });
    return;
  }
  at::parallel_for(0, geo.N * geo.C * geo.h, grain(plane / geo.h), [&](int64_t begin, int64_t end) {
    for (int64_t band = begin; band < end; ++band) {
      const int64_t nc = band / geo.h, i = band % geo.h, y0 = geo.row_first[i], y1 = geo.row_first[i + 1];
      span((nc * geo.H + y0) * geo.W, GateScalar<acc_t>{cell_sigmoid<acc_t>(geo, g, nc, i, 0)}, (y1 - y0) * geo.W);
    }
  });
}

template <typename T, typename G, bool RESIDUAL>
void forward_nchw(const Geometry& geo, const T* x, const Strided4d<const G>& g, const T* shortcut, T* out) {
  using acc_t = acc_type<T>;
  if (geo.w == 1) return forward_nchw_uniform<T, G, RESIDUAL>(geo, x, g, shortcut, out);
  const int64_t H = geo.H, W = geo.W, chunk = chunk_rows(W);
  at::parallel_for(0, geo.N * geo.C * geo.h, grain(H * W / geo.h), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sig(geo.w), gate(chunk * W);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t nc = band / geo.h, i = band % geo.h, y0 = geo.row_first[i], y1 = geo.row_first[i + 1];
      expand_gate_rows(geo, g, nc, i, std::min(chunk, y1 - y0), sig.data(), gate.data());
      for (int64_t y = y0; y < y1; y += chunk) {
        const int64_t off = (nc * H + y) * W, n = std::min(chunk, y1 - y) * W;
        excite_span<T, RESIDUAL>(out + off, x + off, RESIDUAL ? shortcut + off : nullptr,
                                 GateArray<acc_t>{gate.data()}, n);
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
                                 GateArray<acc_t>{gate.data() + geo.src_col[col] * C}, C);
      }
    }
  });
}

// Backward of forward_nchw_uniform, by the same spans. grad * x is summed per element of a group of
// planes, then per plane; a band is summed per position of a kUniformChunk-element chunk over its chunks,
// then over the chunk. The order is fixed by the shapes.
template <typename T, typename G, bool RESIDUAL>
void backward_nchw_uniform(const Geometry& geo, const T* grad_out, const T* out, const T* x,
                           const Strided4d<const G>& g, T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  const int64_t group = planes_per_span(geo), plane = geo.H * geo.W;
  const auto span = [&](int64_t off, auto gate, acc_t* acc, int64_t n) {
    excite_backward_span<T, RESIDUAL>(grad_x + off, RESIDUAL ? grad_shortcut + off : nullptr, grad_out + off,
                                      RESIDUAL ? out + off : nullptr, x + off, gate, acc, n);
  };
  const auto set_grad = [&](int64_t nc, int64_t i, acc_t sum, acc_t s) {
    grad_g(nc / geo.C, nc % geo.C, i, 0) = from_opmath<G>(sum * s * (1 - s));
  };
  if (group > 1) {
    at::parallel_for(0, geo.N * geo.C, grain(plane), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sig(group), gate(group * plane), acc(group * plane);
      for (int64_t p0 = begin; p0 < end; p0 += group) {
        const int64_t p1 = std::min(p0 + group, end);
        expand_plane_gates(geo, g, p0, p1, sig.data(), gate.data());
        std::fill_n(acc.data(), (p1 - p0) * plane, acc_t(0));
        span(p0 * plane, GateArray<acc_t>{gate.data()}, acc.data(), (p1 - p0) * plane);
        for (int64_t p = p0; p < p1; ++p) set_grad(p, 0, sum8(acc.data() + (p - p0) * plane, plane), sig[p - p0]);
      }
    });
    return;
  }
  at::parallel_for(0, geo.N * geo.C * geo.h, grain(plane / geo.h), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kUniformChunk);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t nc = band / geo.h, i = band % geo.h, y0 = geo.row_first[i], y1 = geo.row_first[i + 1];
      const int64_t off = (nc * geo.H + y0) * geo.W, size = (y1 - y0) * geo.W, used = std::min(kUniformChunk, size);
      const acc_t s = cell_sigmoid<acc_t>(geo, g, nc, i, 0);
      std::fill_n(acc.data(), used, acc_t(0));
      for (int64_t k = 0; k < size; k += kUniformChunk)
        span(off + k, GateScalar<acc_t>{s}, acc.data(), std::min(kUniformChunk, size - k));
      set_grad(nc, i, sum8(acc.data(), used), s);
    }
  });
}

// NCHW backward, by bands as the forward: grad * x is summed per position of the chunk over the band's
// chunks, then per column over the chunk's rows, then per gate cell over its columns, in a fixed order.
template <typename T, typename G, bool RESIDUAL>
void backward_nchw(const Geometry& geo, const T* grad_out, const T* out, const T* x, const Strided4d<const G>& g,
                   T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  if (geo.w == 1) {
    return backward_nchw_uniform<T, G, RESIDUAL>(geo, grad_out, out, x, g, grad_x, grad_shortcut, grad_g);
  }
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
                                          RESIDUAL ? out + off : nullptr, x + off, GateArray<acc_t>{gate.data()},
                                          acc.data(), n);
      }
      for (int64_t r = 1; r < rows; ++r) add_to(acc.data(), acc.data() + r * W, W);  // column sums in row 0
      for (int64_t j = 0; j < geo.w; ++j) {
        const acc_t sum = sum8(acc.data() + geo.col_first[j], geo.col_first[j + 1] - geo.col_first[j]);
        grad_g(nc / geo.C, nc % geo.C, i, j) = from_opmath<G>(sum * sig[j] * (1 - sig[j]));
      }
    }
  });
}

// Elements per task of the channels_last backward, about: whole image rows of W x C elements.
constexpr int64_t kRowBlockElements = 131072;

// channels_last backward. A task takes (n, gate row i, block of image rows) and sums grad * x per gate cell
// and channel, per image row first and then over its rows (so float32 rounding grows with the rows and
// columns, not their product), into its own slot of `partial`; a second pass adds each cell's blocks in
// order. The blocks depend on the shape alone, so the sums do not depend on the number of threads.
// (Splitting the channels among threads instead, as before, made two threads slower than one on a global
// gate: each thread streamed half of every pixel.)
template <typename T, typename G, bool RESIDUAL>
void backward_channels_last(const Geometry& geo, const T* grad_out, const T* out, const T* x,
                            const Strided4d<const G>& g, T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  const int64_t C = geo.C, H = geo.H, W = geo.W, cells = geo.w * C;
  int64_t band_rows = 1;
  for (int64_t i = 0; i < geo.h; ++i) band_rows = std::max(band_rows, geo.row_first[i + 1] - geo.row_first[i]);
  const int64_t block_rows = std::max<int64_t>(1, kRowBlockElements / (W * C));
  const int64_t blocks = (band_rows + block_rows - 1) / block_rows;
  const auto expand_gate = [&](int64_t n, int64_t i, acc_t* gate) {  // [j][c]
    for (int64_t j = 0; j < geo.w; ++j)
      for (int64_t c = 0; c < C; ++c) gate[j * C + c] = gate_sigmoid<acc_t>(g(n, c, i, j));
  };
  std::vector<acc_t> partial(geo.N * geo.h * blocks * cells);  // [n][i][block][j][c]
  at::parallel_for(0, geo.N * geo.h * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gate(cells), row_acc(cells);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = t % blocks, i = t / blocks % geo.h, n = t / blocks / geo.h;
      const int64_t y0 = geo.row_first[i] + block * block_rows, y1 = std::min(geo.row_first[i + 1], y0 + block_rows);
      acc_t* acc = partial.data() + t * cells;
      std::fill_n(acc, cells, acc_t(0));
      if (y0 >= y1) continue;  // a band shorter than the longest
      expand_gate(n, i, gate.data());
      for (int64_t y = y0; y < y1; ++y) {
        std::fill(row_acc.begin(), row_acc.end(), acc_t(0));
        for (int64_t col = 0; col < W; ++col) {
          const int64_t off = ((n * H + y) * W + col) * C, cell = geo.src_col[col] * C;
          excite_backward_span<T, RESIDUAL>(grad_x + off, RESIDUAL ? grad_shortcut + off : nullptr, grad_out + off,
                                            RESIDUAL ? out + off : nullptr, x + off,
                                            GateArray<acc_t>{gate.data() + cell}, row_acc.data() + cell, C);
        }
        add_to(acc, row_acc.data(), cells);
      }
    }
  });
  at::parallel_for(0, geo.N * geo.h, grain(blocks * cells), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gate(cells);
    for (int64_t nh = begin; nh < end; ++nh) {
      acc_t* sum = partial.data() + nh * blocks * cells;
      for (int64_t block = 1; block < blocks; ++block) add_to(sum, sum + block * cells, cells);
      const int64_t n = nh / geo.h, i = nh % geo.h;
      expand_gate(n, i, gate.data());
      for (int64_t k = 0; k < cells; ++k) grad_g(n, k % C, i, k / C) = from_opmath<G>(sum[k] * gate[k] * (1 - gate[k]));
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

TORCH_LIBRARY_IMPL(ge_detectron_cpu, CPU, m) {
  m.impl("excite", excite_cpu);
  m.impl("excite_backward", excite_backward_cpu);
  m.impl("excite_residual", excite_residual_cpu);
  m.impl("excite_residual_backward", excite_residual_backward_cpu);
}

}  // namespace ge_detectron
