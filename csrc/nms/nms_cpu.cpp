// Greedy NMS on the CPU: sort once, then each kept box suppresses the later boxes it overlaps.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "nms.h"
#include "nms_common.h"

namespace maskrcnn {
namespace {

at::Tensor to_long_tensor(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

}  // namespace

void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "nms: scores must be [", boxes.size(0),
              "], got ", scores.sizes());
  TORCH_CHECK(boxes.is_floating_point(), "nms: boxes must be floating point, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "nms: boxes on ", boxes.device(), " but scores on ", scores.device());
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // Stable sort: equal scores keep the lower index first, as the twin does.
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  // Half types are decided in float32, like the twin.
  const at::Tensor b = boxes.scalar_type() == at::kDouble ? boxes : boxes.to(at::kFloat);
  const at::Tensor sorted = b.index_select(0, order).contiguous();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_cpu", [&] {
    // Coordinates as structure of arrays, so that the inner loop (one kept box against all later
    // ones, branch-free) runs over contiguous values and vectorises.
    const scalar_t* bx = sorted.data_ptr<scalar_t>();
    std::vector<scalar_t> x1(n), y1(n), x2(n), y2(n), area(n);
    for (int64_t i = 0; i < n; ++i) {
      x1[i] = bx[4 * i];
      y1[i] = bx[4 * i + 1];
      x2[i] = bx[4 * i + 2];
      y2[i] = bx[4 * i + 3];
      area[i] = box_area(bx + 4 * i);
    }
    std::vector<uint8_t> removed(n, 0);
    const scalar_t thr = static_cast<scalar_t>(iou_threshold);  // the twin compares in the boxes' dtype
    const int64_t* ord = order.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (removed[i]) continue;
      keep.push_back(ord[i]);
      const scalar_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = area[i];
      uint8_t* rm = removed.data();
      for (int64_t j = i + 1; j < n; ++j) {
        // box_iou's arithmetic, written out over the arrays (a box already removed may be marked again).
        const scalar_t l = ix1 > x1[j] ? ix1 : x1[j], t = iy1 > y1[j] ? iy1 : y1[j];
        const scalar_t r = ix2 < x2[j] ? ix2 : x2[j], btm = iy2 < y2[j] ? iy2 : y2[j];
        const scalar_t w = r - l, h = btm - t;
        const scalar_t inter = (w > scalar_t(0) ? w : scalar_t(0)) * (h > scalar_t(0) ? h : scalar_t(0));
        const scalar_t uni = (ia + area[j]) - inter;
        const scalar_t iou = uni > scalar_t(0) ? inter / (uni > scalar_t(1e-12) ? uni : scalar_t(1e-12)) : scalar_t(0);
        rm[j] |= static_cast<uint8_t>(iou > thr);
      }
    }
  });
  return to_long_tensor(keep);
}

at::Tensor greedy_suppress_cpu(const at::Tensor& iou_sorted, double iou_threshold) {
  TORCH_CHECK(iou_sorted.dim() == 2 && iou_sorted.size(0) == iou_sorted.size(1),
              "greedy_suppress: iou must be a square [N, N] matrix, got ", iou_sorted.sizes());
  const int64_t n = iou_sorted.size(0);
  if (n == 0) return at::empty({0}, iou_sorted.options().dtype(at::kLong));
  const at::Tensor iou = iou_sorted.contiguous();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iou.scalar_type(), "greedy_suppress_cpu", [&] {
    const scalar_t* m = iou.data_ptr<scalar_t>();
    const scalar_t thr = static_cast<scalar_t>(iou_threshold);
    std::vector<uint8_t> removed(n, 0);
    for (int64_t i = 0; i < n; ++i) {
      if (removed[i]) continue;
      keep.push_back(i);
      const scalar_t* row = m + i * n;
      for (int64_t j = i + 1; j < n; ++j) removed[j] |= static_cast<uint8_t>(row[j] > thr);
    }
  });
  return to_long_tensor(keep);
}

}  // namespace maskrcnn
