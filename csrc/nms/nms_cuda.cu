// Greedy NMS on CUDA, in two kernels and one small host sync (the kept count).
//
// 1. mask_kernel: for sorted boxes i < j, bit j of row i says IoU(i, j) > threshold. Rows are
//    64-bit words over 64-box column blocks; a block of 64 threads fills one 64 x 64 tile.
// 2. scan_kernel (one block): the sequential greedy pass, a 64-box word at a time. Within a
//    word the decisions depend only on the word's diagonal tile, which every warp resolves in
//    registers; the kept rows are then OR-ed into the later words by all threads, so the block
//    synchronises once per 64 boxes, not once per box.
// greedy_suppress packs a precomputed IoU matrix into the same bit rows and reuses the scan.
#include <ATen/Dispatch.h>
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "nms.h"
#include "nms_common.h"

namespace maskrcnn {
namespace {

constexpr int kBits = 64;
constexpr int kScanThreads = 256;
constexpr int64_t kMaxSharedWords = 48 * 1024 / 8;

template <typename T>
__global__ void mask_kernel(const T* __restrict__ boxes, int64_t n, int64_t col_blocks, T thr,
                            unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;  // below the diagonal: never read by the scan
  const int rows = static_cast<int>(min(n - row_block * kBits, static_cast<int64_t>(kBits)));
  const int cols = static_cast<int>(min(n - col_block * kBits, static_cast<int64_t>(kBits)));
  __shared__ T cb[kBits * 4];
  __shared__ T ca[kBits];
  if (threadIdx.x < cols) {
    const T* b = boxes + (col_block * kBits + threadIdx.x) * 4;
    for (int q = 0; q < 4; ++q) cb[threadIdx.x * 4 + q] = b[q];
    ca[threadIdx.x] = box_area(b);
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int64_t i = row_block * kBits + threadIdx.x;
  const T* bi = boxes + i * 4;
  const T area_i = box_area(bi);
  unsigned long long bits = 0;
  const int start = col_block == row_block ? threadIdx.x + 1 : 0;
  for (int t = start; t < cols; ++t) {
    if (box_iou(bi, cb + t * 4, area_i, ca[t]) > thr) bits |= 1ULL << t;
  }
  mask[i * col_blocks + col_block] = bits;
}

template <typename T>
__global__ void pack_kernel(const T* __restrict__ iou, int64_t n, int64_t col_blocks, T thr,
                            unsigned long long* __restrict__ mask) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * col_blocks) return;
  const int64_t i = idx / col_blocks, w = idx % col_blocks;
  unsigned long long bits = 0;
  const int64_t j0 = w * kBits;
  const int64_t j1 = min(j0 + kBits, n);
  for (int64_t j = max(j0, i + 1); j < j1; ++j) {
    if (iou[i * n + j] > thr) bits |= 1ULL << (j - j0);
  }
  mask[idx] = bits;
}

// removed: col_blocks words, in shared memory when it fits, else in global scratch.
__global__ void scan_kernel(const unsigned long long* __restrict__ mask, int64_t n, int64_t col_blocks,
                            unsigned long long* removed_global, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed_shared[];
  unsigned long long* removed = removed_global != nullptr ? removed_global : removed_shared;
  const int lane = threadIdx.x & 31;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  for (int64_t w = 0; w < col_blocks; ++w) {
    const int nb = static_cast<int>(min(n - w * kBits, static_cast<int64_t>(kBits)));
    const unsigned long long* rows = mask + w * kBits * col_blocks;
    // Diagonal tile: lane l holds rows l and l + 32 of this word.
    const unsigned long long d0 = lane < nb ? rows[lane * col_blocks + w] : 0ULL;
    const unsigned long long d1 = lane + 32 < nb ? rows[(lane + 32) * col_blocks + w] : 0ULL;
    unsigned long long cur = removed[w];
    unsigned long long kept = 0;
    for (int b = 0; b < nb; ++b) {
      const unsigned long long lo = __shfl_sync(0xffffffffu, d0, b & 31);
      const unsigned long long hi = __shfl_sync(0xffffffffu, d1, b & 31);
      if (!((cur >> b) & 1ULL)) {
        kept |= 1ULL << b;
        cur |= b < 32 ? lo : hi;
      }
    }
    // Later words only: removed[w] itself is read, never written, in this iteration.
    for (int64_t j = w + 1 + threadIdx.x; j < col_blocks; j += blockDim.x) {
      unsigned long long acc = 0, k = kept;
      while (k) {
        const int b = __ffsll(static_cast<long long>(k)) - 1;
        k &= k - 1;
        acc |= rows[b * col_blocks + j];
      }
      removed[j] |= acc;
    }
    if (threadIdx.x < nb) keep[w * kBits + threadIdx.x] = (kept >> threadIdx.x) & 1ULL;
    __syncthreads();
  }
}

at::Tensor run_scan(const at::Tensor& mask, int64_t n, int64_t col_blocks, cudaStream_t stream) {
  at::Tensor keep = at::empty({n}, mask.options().dtype(at::kBool));
  at::Tensor scratch;
  unsigned long long* removed_global = nullptr;
  size_t shared = 0;
  if (col_blocks <= kMaxSharedWords) {
    shared = col_blocks * sizeof(unsigned long long);
  } else {
    scratch = at::empty({col_blocks}, mask.options().dtype(at::kLong));
    removed_global = reinterpret_cast<unsigned long long*>(scratch.data_ptr<int64_t>());
  }
  scan_kernel<<<1, kScanThreads, shared, stream>>>(reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()),
                                                   n, col_blocks, removed_global, keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK(boxes.is_cuda(), "nms_cuda: boxes must be on a CUDA device");
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor b = boxes.scalar_type() == at::kDouble ? boxes : boxes.to(at::kFloat);
  const at::Tensor sorted = b.index_select(0, order).contiguous();
  const int64_t col_blocks = (n + kBits - 1) / kBits;
  TORCH_CHECK(col_blocks <= 65535, "nms_cuda: too many boxes (", n, "); at most ", 65535 * kBits);
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
    mask_kernel<scalar_t><<<grid, kBits, 0, stream>>>(sorted.data_ptr<scalar_t>(), n, col_blocks,
                                                      static_cast<scalar_t>(iou_threshold),
                                                      reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor keep = run_scan(mask, n, col_blocks, stream);
  return order.masked_select(keep);
}

at::Tensor greedy_suppress_cuda(const at::Tensor& iou_sorted, double iou_threshold) {
  TORCH_CHECK(iou_sorted.is_cuda(), "greedy_suppress_cuda: iou must be on a CUDA device");
  TORCH_CHECK(iou_sorted.dim() == 2 && iou_sorted.size(0) == iou_sorted.size(1),
              "greedy_suppress: iou must be a square [N, N] matrix, got ", iou_sorted.sizes());
  c10::cuda::CUDAGuard guard(iou_sorted.device());
  const int64_t n = iou_sorted.size(0);
  if (n == 0) return at::empty({0}, iou_sorted.options().dtype(at::kLong));
  const at::Tensor iou = iou_sorted.contiguous();
  const int64_t col_blocks = (n + kBits - 1) / kBits;
  at::Tensor mask = at::empty({n * col_blocks}, iou.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iou.scalar_type(), "greedy_suppress_cuda", [&] {
    const int64_t total = n * col_blocks;
    pack_kernel<scalar_t><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
        iou.data_ptr<scalar_t>(), n, col_blocks, static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor keep = run_scan(mask, n, col_blocks, stream);
  return at::arange(n, iou.options().dtype(at::kLong)).masked_select(keep);
}

}  // namespace maskrcnn
