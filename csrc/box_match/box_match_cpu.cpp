// Each box's best ground-truth box by IoU, and each ground truth's best boxes, in one fused pass
// over the [B, G, A] pairs (no [B, G, A] temporaries). The IoU is the twin's float32 arithmetic
// (maskrcnn/ops/box_match.py: pairwise_iou_batched), operation for operation, so ties and
// thresholds are decided alike.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "box_match.h"

namespace maskrcnn {
namespace {

constexpr int64_t kChunk = 2048;  // boxes per task: a task's coordinates stay in L1/L2

// The twin's area: clamp(x2 - x1, min=0) * clamp(y2 - y1, min=0).
inline float area_of(float x1, float y1, float x2, float y2) {
  const float w = x2 - x1, h = y2 - y1;
  return (w > 0.f ? w : 0.f) * (h > 0.f ? h : 0.f);
}

// The twin's IoU of a ground-truth box (g*) and a box (b*), given their areas.
inline float iou_of(float gx1, float gy1, float gx2, float gy2, float garea, float bx1, float by1, float bx2, float by2,
                    float barea) {
  const float iw = std::min(gx2, bx2) - std::max(gx1, bx1);
  const float ih = std::min(gy2, by2) - std::max(gy1, by1);
  const float inter = (iw > 0.f ? iw : 0.f) * (ih > 0.f ? ih : 0.f);
  const float uni = (garea + barea) - inter;
  return uni > 0.f ? inter / (uni > 1e-12f ? uni : 1e-12f) : 0.f;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_boxes_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                                                               const at::Tensor& boxes) {
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, "match_boxes: gt_boxes must be [B, G, 4], got ",
              gt_boxes.sizes());
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1);
  TORCH_CHECK(gt_valid.dim() == 2 && gt_valid.size(0) == B && gt_valid.size(1) == G &&
                  gt_valid.scalar_type() == at::kBool,
              "match_boxes: gt_valid must be bool [", B, ", ", G, "], got ", gt_valid.scalar_type(), " ",
              gt_valid.sizes());
  TORCH_CHECK((boxes.dim() == 2 && boxes.size(1) == 4) ||
                  (boxes.dim() == 3 && boxes.size(2) == 4 && (boxes.size(0) == B || boxes.size(0) == 1)),
              "match_boxes: boxes must be [A, 4], [1, A, 4] or [", B, ", A, 4], got ", boxes.sizes());
  TORCH_CHECK(gt_boxes.is_floating_point() && boxes.is_floating_point(), "match_boxes: boxes must be floating point, got ",
              gt_boxes.scalar_type(), " and ", boxes.scalar_type());
  TORCH_CHECK(gt_boxes.device() == boxes.device() && gt_valid.device() == boxes.device(),
              "match_boxes: gt_boxes, gt_valid and boxes must be on one device");
  const int64_t A = boxes.size(-2);
  const bool shared = boxes.dim() == 2 || boxes.size(0) == 1;
  const auto fopts = boxes.options().dtype(at::kFloat);
  // The twin's initial values where nothing is valid: IoU -1 (padding), GT index 0.
  at::Tensor best = at::full({B, A}, -1.0, fopts);
  at::Tensor matched = at::zeros({B, A}, fopts.dtype(at::kLong));
  at::Tensor low_quality = at::zeros({B, A}, fopts.dtype(at::kBool));
  if (B == 0 || G == 0 || A == 0) return {best, matched, low_quality};

  const at::Tensor gt = gt_boxes.to(at::kFloat).contiguous();
  const at::Tensor valid = gt_valid.contiguous();
  // Boxes as structure of arrays (x1, y1, x2, y2, area), so the inner loop runs over contiguous floats.
  const at::Tensor bx = boxes.to(at::kFloat).reshape({-1, A, 4}).contiguous();
  const int64_t nb = bx.size(0);
  std::vector<float> soa(static_cast<size_t>(nb * 5 * A));
  {
    const float* p = bx.data_ptr<float>();
    for (int64_t i = 0; i < nb; ++i) {
      float* s = soa.data() + i * 5 * A;
      for (int64_t a = 0; a < A; ++a) {
        const float* q = p + (i * A + a) * 4;
        s[a] = q[0];
        s[A + a] = q[1];
        s[2 * A + a] = q[2];
        s[3 * A + a] = q[3];
        s[4 * A + a] = area_of(q[0], q[1], q[2], q[3]);
      }
    }
  }
  std::vector<float> gt_area(static_cast<size_t>(B * G));
  const float* g = gt.data_ptr<float>();
  for (int64_t i = 0; i < B * G; ++i) gt_area[i] = area_of(g[4 * i], g[4 * i + 1], g[4 * i + 2], g[4 * i + 3]);
  const bool* ok = valid.data_ptr<bool>();

  const int64_t chunks = (A + kChunk - 1) / kChunk;
  std::vector<float> partial_max(static_cast<size_t>(B * chunks * G), -1.f);  // per (image, chunk) GT maxima
  float* best_p = best.data_ptr<float>();
  int64_t* matched_p = matched.data_ptr<int64_t>();

  // Pass 1: per box its best GT (the first of equal maxima, as torch.max), per chunk each GT's best IoU.
  at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / chunks, a0 = (t % chunks) * kChunk, a1 = std::min(A, a0 + kChunk);
      const float* s = soa.data() + (shared ? 0 : b) * 5 * A;
      const float *x1 = s, *y1 = s + A, *x2 = s + 2 * A, *y2 = s + 3 * A, *ar = s + 4 * A;
      float* bb = best_p + b * A;
      int64_t* mb = matched_p + b * A;
      for (int64_t j = 0; j < G; ++j) {
        if (!ok[b * G + j]) continue;
        const float* q = g + (b * G + j) * 4;
        const float gx1 = q[0], gy1 = q[1], gx2 = q[2], gy2 = q[3], ga = gt_area[b * G + j];
        float gmax = -1.f;
        for (int64_t a = a0; a < a1; ++a) {
          const float v = iou_of(gx1, gy1, gx2, gy2, ga, x1[a], y1[a], x2[a], y2[a], ar[a]);
          const bool better = v > bb[a];
          bb[a] = better ? v : bb[a];
          mb[a] = better ? j : mb[a];
          gmax = v > gmax ? v : gmax;
        }
        partial_max[(b * chunks + t % chunks) * G + j] = gmax;
      }
    }
  });

  // Each GT's best IoU over all boxes; the smallest positive one per image bounds pass 2.
  std::vector<float> gt_best(static_cast<size_t>(B * G), -1.f);
  std::vector<float> lowest(static_cast<size_t>(B), -1.f);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < G; ++j) {
      float m = -1.f;
      for (int64_t c = 0; c < chunks; ++c) m = std::max(m, partial_max[(b * chunks + c) * G + j]);
      gt_best[b * G + j] = m;
      if (ok[b * G + j] && m > 0.f && (lowest[b] < 0.f || m < lowest[b])) lowest[b] = m;
    }
  }

  // Pass 2: the boxes that reach some GT's best IoU (ties included, positive only). A box's IoU with
  // any GT is at most its own best, so boxes whose best is below every GT's best are skipped.
  bool* lq = low_quality.data_ptr<bool>();
  at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / chunks, a0 = (t % chunks) * kChunk, a1 = std::min(A, a0 + kChunk);
      if (lowest[b] <= 0.f) continue;
      const float* s = soa.data() + (shared ? 0 : b) * 5 * A;
      const float *x1 = s, *y1 = s + A, *x2 = s + 2 * A, *y2 = s + 3 * A, *ar = s + 4 * A;
      for (int64_t a = a0; a < a1; ++a) {
        if (!(best_p[b * A + a] >= lowest[b])) continue;
        for (int64_t j = 0; j < G; ++j) {
          const float m = gt_best[b * G + j];
          if (!ok[b * G + j] || !(m > 0.f)) continue;
          const float* q = g + (b * G + j) * 4;
          if (iou_of(q[0], q[1], q[2], q[3], gt_area[b * G + j], x1[a], y1[a], x2[a], y2[a], ar[a]) == m) {
            lq[b * A + a] = true;
            break;
          }
        }
      }
    }
  });
  return {best, matched, low_quality};
}

}  // namespace maskrcnn
