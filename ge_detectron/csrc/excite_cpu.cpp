// CPU kernels of the ge_detectron excite operators (schemas in excite.cpp).
//
// Each kernel makes one pass over the full-size tensors. The gate sigmoid(up(g)) is never materialised
// at full size: a task keeps the sigmoid of the gate row it is on (expanded to W columns for NCHW, or
// w x C for channels_last) and the inner loops are plain vectorised element-wise spans over it.
// The backward accumulates the g-gradient in the opmath type, each gate cell inside one task in a fixed
// order, so it is deterministic for both layouts and any number of threads.
#include "excite.h"
#include "float_convert.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
// bfloat16 included (float_convert.h). ATen's Vectorized<> is not used: outside ATen's per-CPU-capability
// builds its generic fallback compiles to scalar code.

// out = x * gate, or relu(x * gate + shortcut), over n consecutive elements.
template <typename T, bool RESIDUAL>
void excite_span(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ shortcut,
                 const acc_type<T>* __restrict__ gate, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc_type<T> y = to_opmath(x[k]) * gate[k];
    if constexpr (RESIDUAL) {
      y += to_opmath(shortcut[k]);
      y = y < 0 ? 0 : y;
    }
    out[k] = from_opmath<T>(y);
  }
}

// Backward of excite_span over n elements: with m = grad_out (RESIDUAL: grad_out where out > 0, else 0,
// which is also grad_shortcut), grad_x = m * gate and acc += m * x.
template <typename T, bool RESIDUAL>
void excite_backward_span(T* __restrict__ grad_x, T* __restrict__ grad_shortcut, const T* __restrict__ grad_out,
                          const T* __restrict__ out, const T* __restrict__ x, const acc_type<T>* __restrict__ gate,
                          acc_type<T>* __restrict__ acc, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc_type<T> m = to_opmath(grad_out[k]);
    if constexpr (RESIDUAL) {
      m = to_opmath(out[k]) > 0 ? m : 0;
      grad_shortcut[k] = from_opmath<T>(m);
    }
    grad_x[k] = from_opmath<T>(m * gate[k]);
    acc[k] += m * to_opmath(x[k]);
  }
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
      : data(t.data_ptr<std::remove_const_t<T>>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  T& operator()(int64_t n, int64_t c, int64_t i, int64_t j) const {
    return data[n * s0 + c * s1 + i * s2 + j * s3];
  }
};

template <typename acc_t, typename G>
acc_t gate_sigmoid(G logit) {
  return acc_t(1) / (acc_t(1) + std::exp(-to_opmath(logit)));
}

// Rows per task such that a task covers about GRAIN_SIZE elements.
int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elements_per_item));
}

template <typename T, typename G, bool RESIDUAL>
void forward_nchw(const Geometry& geo, const T* x, const Strided4d<const G>& g, const T* shortcut, T* out) {
  using acc_t = acc_type<T>;
  const int64_t H = geo.H, W = geo.W;
  at::parallel_for(0, geo.N * geo.C * H, grain(W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sig(geo.w), gate(W);
    int64_t cached = -1;  // (n * C + c) * h + i of the gate row in `gate`
    for (int64_t r = begin; r < end; ++r) {
      const int64_t nc = r / H, i = geo.src_row[r % H];
      if (nc * geo.h + i != cached) {
        cached = nc * geo.h + i;
        for (int64_t j = 0; j < geo.w; ++j) sig[j] = gate_sigmoid<acc_t>(g(nc / geo.C, nc % geo.C, i, j));
        for (int64_t c = 0; c < W; ++c) gate[c] = sig[geo.src_col[c]];
      }
      excite_span<T, RESIDUAL>(out + r * W, x + r * W, RESIDUAL ? shortcut + r * W : nullptr, gate.data(), W);
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

// One task per (n, c) plane; a plane's gate rows in order, each summed over its rows, then its cells.
template <typename T, typename G, bool RESIDUAL>
void backward_nchw(const Geometry& geo, const T* grad_out, const T* out, const T* x, const Strided4d<const G>& g,
                   T* grad_x, T* grad_shortcut, const Strided4d<G>& grad_g) {
  using acc_t = acc_type<T>;
  const int64_t H = geo.H, W = geo.W;
  at::parallel_for(0, geo.N * geo.C, grain(H * W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sig(geo.w), gate(W), acc(W);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / geo.C, c = nc % geo.C;
      for (int64_t i = 0; i < geo.h; ++i) {
        for (int64_t j = 0; j < geo.w; ++j) sig[j] = gate_sigmoid<acc_t>(g(n, c, i, j));
        for (int64_t col = 0; col < W; ++col) gate[col] = sig[geo.src_col[col]];
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t y = geo.row_first[i]; y < geo.row_first[i + 1]; ++y) {
          const int64_t off = (nc * H + y) * W;
          excite_backward_span<T, RESIDUAL>(grad_x + off, RESIDUAL ? grad_shortcut + off : nullptr, grad_out + off,
                                            RESIDUAL ? out + off : nullptr, x + off, gate.data(), acc.data(), W);
        }
        for (int64_t j = 0; j < geo.w; ++j) {
          acc_t sum = 0;
          for (int64_t col = geo.col_first[j]; col < geo.col_first[j + 1]; ++col) sum += acc[col];
          grad_g(n, c, i, j) = from_opmath<G>(sum * sig[j] * (1 - sig[j]));
        }
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
  const int64_t splits = std::min((2 * at::get_num_threads() + geo.N * geo.h - 1) / (geo.N * geo.h), (C + 15) / 16);
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
