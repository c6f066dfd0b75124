// Crop-mask intersections on the CPU, bit-packed.
//
// Each mask is reduced to the tight box of its nonzero pixels, and each row of that box is
// packed into 64-bit words whose bit k is image column x0 + k. A pair whose tight boxes overlap
// costs (overlapping rows) x (words per row) shift/AND/popcount steps; any other pair costs one
// box test. Padding of the crops (all crops share the largest crop's size) costs nothing.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mask_iou.h"

namespace maskrcnn {
namespace {

// Below this many bytes (packing) or pair tests, one thread is faster than waking the pool.
constexpr int64_t kMinParallelWork = 1 << 22;

inline int popcount64(uint64_t v) {
  // Portable (no -mpopcnt needed); the compiler turns this into a few shifts and one multiply.
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((v * 0x0101010101010101ULL) >> 56);
}

struct PackedMasks {
  // Per mask: tight box in image pixels [x0, x1) x [y0, y1) (x1 == x0 when empty),
  // words per packed row, and the offset of its first row in `words`.
  std::vector<int64_t> x0, y0, x1, y1, nw, offset;
  std::vector<uint64_t> words;
};

PackedMasks pack(const at::Tensor& crops, const at::Tensor& origins) {
  const int64_t n = crops.size(0), h = crops.size(1), w = crops.size(2);
  const uint8_t* data = crops.data_ptr<uint8_t>();
  const int64_t* org = origins.data_ptr<int64_t>();
  PackedMasks p;
  p.x0.assign(n, 0), p.y0.assign(n, 0), p.x1.assign(n, 0), p.y1.assign(n, 0);
  p.nw.assign(n, 0), p.offset.assign(n + 1, 0);
  const int64_t grain = n * h * w < kMinParallelWork ? std::max<int64_t>(n, 1) : 16;
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint8_t* m = data + i * h * w;
      int64_t r0 = h, r1 = -1, c0 = w, c1 = -1;
      for (int64_t r = 0; r < h; ++r) {
        const uint8_t* row = m + r * w;
        int64_t first = -1, last = -1;
        for (int64_t c = 0; c < w; ++c) {
          if (row[c]) {
            if (first < 0) first = c;
            last = c;
          }
        }
        if (first < 0) continue;
        r0 = std::min(r0, r), r1 = r;
        c0 = std::min(c0, first), c1 = std::max(c1, last);
      }
      if (r1 < 0) continue;  // empty mask: an empty box, never paired
      p.x0[i] = org[2 * i] + c0, p.x1[i] = org[2 * i] + c1 + 1;
      p.y0[i] = org[2 * i + 1] + r0, p.y1[i] = org[2 * i + 1] + r1 + 1;
      p.nw[i] = (c1 - c0 + 1 + 63) / 64;
    }
  });
  for (int64_t i = 0; i < n; ++i) p.offset[i + 1] = p.offset[i] + (p.y1[i] - p.y0[i]) * p.nw[i];
  p.words.assign(p.offset[n], 0);
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (p.nw[i] == 0) continue;
      const int64_t r0 = p.y0[i] - org[2 * i + 1], c0 = p.x0[i] - org[2 * i];
      const int64_t rows = p.y1[i] - p.y0[i], cols = p.x1[i] - p.x0[i];
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* src = data + i * h * w + (r0 + r) * w + c0;
        uint64_t* dst = p.words.data() + p.offset[i] + r * p.nw[i];
        for (int64_t c = 0; c < cols; ++c) dst[c >> 6] |= static_cast<uint64_t>(src[c] != 0) << (c & 63);
      }
    }
  });
  return p;
}

// 64 bits of a packed row starting at bit `pos` (>= 0); bits past the row are 0.
inline uint64_t bits_at(const uint64_t* row, int64_t nw, int64_t pos) {
  const int64_t q = pos >> 6;
  const int r = static_cast<int>(pos & 63);
  if (q >= nw) return 0;
  const uint64_t lo = row[q] >> r;
  if (r == 0 || q + 1 >= nw) return lo;
  return lo | (row[q + 1] << (64 - r));
}

// Pixels set in both rows; `shift` = (b's first column) - (a's first column) in image pixels.
inline int64_t row_intersection(const uint64_t* a, int64_t anw, const uint64_t* b, int64_t bnw, int64_t shift) {
  int64_t count = 0;
  if (shift >= 0) {  // b's bit k is a's bit k + shift
    for (int64_t k = 0; k < bnw; ++k) count += popcount64(b[k] & bits_at(a, anw, k * 64 + shift));
  } else {
    for (int64_t k = 0; k < anw; ++k) count += popcount64(a[k] & bits_at(b, bnw, k * 64 - shift));
  }
  return count;
}

}  // namespace

void check_crop_inputs(const at::Tensor& crops, const at::Tensor& origins, const char* name) {
  TORCH_CHECK(crops.dim() == 3, "crop_mask_intersection: ", name, "_crops must be [N, h, w], got ", crops.sizes());
  TORCH_CHECK(crops.scalar_type() == at::kByte || crops.scalar_type() == at::kBool, "crop_mask_intersection: ",
              name, "_crops must be uint8 or bool, got ", crops.scalar_type());
  TORCH_CHECK(origins.dim() == 2 && origins.size(0) == crops.size(0) && origins.size(1) == 2,
              "crop_mask_intersection: ", name, "_origins must be [", crops.size(0), ", 2] (x0, y0), got ",
              origins.sizes());
  TORCH_CHECK(origins.scalar_type() == at::kLong, "crop_mask_intersection: ", name, "_origins must be int64, got ",
              origins.scalar_type());
  TORCH_CHECK(origins.device() == crops.device(), "crop_mask_intersection: ", name, "_origins on ", origins.device(),
              " but ", name, "_crops on ", crops.device());
}

at::Tensor crop_mask_intersection_cpu(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                      const at::Tensor& b_crops, const at::Tensor& b_origins) {
  check_crop_inputs(a_crops, a_origins, "a");
  check_crop_inputs(b_crops, b_origins, "b");
  TORCH_CHECK(a_crops.device().is_cpu() && b_crops.device().is_cpu(),
              "crop_mask_intersection_cpu: tensors must be on the CPU");
  const int64_t N = a_crops.size(0), M = b_crops.size(0);
  at::Tensor out = at::zeros({N, M}, a_origins.options());
  if (N == 0 || M == 0) return out;
  // bool and uint8 share the byte layout; any nonzero byte is foreground.
  const PackedMasks a = pack(a_crops.contiguous().view(at::kByte), a_origins.contiguous());
  const PackedMasks b = pack(b_crops.contiguous().view(at::kByte), b_origins.contiguous());
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, N, N * M < kMinParallelWork ? N : 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (a.nw[i] == 0) continue;
      for (int64_t j = 0; j < M; ++j) {
        const int64_t y0 = std::max(a.y0[i], b.y0[j]), y1 = std::min(a.y1[i], b.y1[j]);
        if (y1 <= y0 || std::max(a.x0[i], b.x0[j]) >= std::min(a.x1[i], b.x1[j])) continue;
        const int64_t shift = b.x0[j] - a.x0[i];
        int64_t count = 0;
        for (int64_t y = y0; y < y1; ++y) {
          const uint64_t* ar = a.words.data() + a.offset[i] + (y - a.y0[i]) * a.nw[i];
          const uint64_t* br = b.words.data() + b.offset[j] + (y - b.y0[j]) * b.nw[j];
          count += row_intersection(ar, a.nw[i], br, b.nw[j], shift);
        }
        o[i * M + j] = count;
      }
    }
  });
  return out;
}

}  // namespace maskrcnn
