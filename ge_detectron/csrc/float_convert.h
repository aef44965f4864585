// Conversions between float16 / bfloat16 and float for the CPU kernels' inner loops, written so that
// the compiler's auto-vectoriser turns them into packed integer and float code: no branches, selects
// as bit masks. c10::Half's and c10::BFloat16's own conversions compile to scalar code with branches
// unless the whole file is built for F16C / AVX2. Results equal c10's (round to nearest even;
// NaN becomes the canonical quiet NaN on narrowing). On x86-64, whole arrays of float16 are converted
// with F16C where the CPU has it (the auto-vectoriser does not emit F16C's conversions).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GE_HAVE_F16C 1
#endif

namespace ge_detectron {

// All ones if `condition`, else zero.
inline uint32_t mask_if(bool condition) {
  return 0u - static_cast<uint32_t>(condition);
}

inline float bfloat16_bits_to_float(uint16_t bits) {
  return c10::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

inline uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t u = c10::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // ties to even; carries into the exponent
  const uint32_t nan = mask_if(static_cast<int32_t>(u & 0x7fffffffu) > 0x7f800000);
  return static_cast<uint16_t>((rounded & ~nan) | (0x7fc0u & nan));
}

inline float half_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  // Normal: rebias the exponent (127 - 15); infinity / NaN (exponent 31): float's all-ones exponent.
  const uint32_t normal = (((exponent + 112u) << 23) | (mantissa << 13)) | (mask_if(exponent == 31u) & 0x7f800000u);
  // Zero / subnormal: mantissa * 2^-24, exact in float.
  const uint32_t subnormal =
      c10::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(mantissa)) * c10::bit_cast<float>(0x33800000u));
  const uint32_t is_subnormal = mask_if(exponent == 0u);
  return c10::bit_cast<float>(sign | (subnormal & is_subnormal) | (normal & ~is_subnormal));
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t u = c10::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
  const int32_t m = static_cast<int32_t>(magnitude);  // compared signed: SIMD has signed compares
  // |f| >= 2^-14: drop 13 mantissa bits, ties to even, rebias the exponent; a carry out of the
  // mantissa bumps the exponent (up to infinity at 65520).
  const uint32_t normal = (magnitude - (112u << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13;
  // |f| < 2^-14: count 2^-24 units. Adding 0.5 (whose ulp is 2^-24) rounds to them, ties to even.
  const uint32_t subnormal = c10::bit_cast<uint32_t>(c10::bit_cast<float>(magnitude) + 0.5f) - 0x3f000000u;
  const uint32_t is_subnormal = mask_if(m < 0x38800000);
  const uint32_t is_infinite = mask_if(m >= 0x47800000);  // |f| >= 65536, or infinity
  const uint32_t is_nan = mask_if(m > 0x7f800000);
  uint32_t h = (subnormal & is_subnormal) | (normal & ~is_subnormal);
  h = (h & ~is_infinite) | (0x7c00u & is_infinite);
  h = (h & ~is_nan) | (0x7e00u & is_nan);
  return static_cast<uint16_t>(sign | h);
}

// to_opmath(v): float for float16 / bfloat16 (and float), double for double. from_opmath<T>(v): back.
inline float to_opmath(float v) {
  return v;
}
inline double to_opmath(double v) {
  return v;
}
inline float to_opmath(c10::Half v) {
  return half_bits_to_float(v.x);
}
inline float to_opmath(c10::BFloat16 v) {
  return bfloat16_bits_to_float(v.x);
}

template <typename T, typename A>
inline T from_opmath(A v) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    return c10::Half(float_to_half_bits(v), c10::Half::from_bits());
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return c10::BFloat16(float_to_bfloat16_bits(v), c10::BFloat16::from_bits());
  } else {
    return static_cast<T>(v);
  }
}

#ifdef GE_HAVE_F16C
// Whether the CPU has F16C (and AVX), the one-instruction conversions of 8 float16 values to float and back.
inline bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return yes;
}

// dst[k] = float(src[k]) for k < n with F16C; call only where has_f16c().
__attribute__((target("avx,f16c"))) inline void half_to_float_f16c(float* dst, const c10::Half* src, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < n; ++k) dst[k] = half_bits_to_float(src[k].x);
}

// dst[k] = float16(src[k]) for k < n, rounded to nearest even, with F16C; call only where has_f16c().
__attribute__((target("avx,f16c"))) inline void float_to_half_f16c(c10::Half* dst, const float* src, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  for (; k < n; ++k) dst[k] = c10::Half(float_to_half_bits(src[k]), c10::Half::from_bits());
}
#endif

}  // namespace ge_detectron
