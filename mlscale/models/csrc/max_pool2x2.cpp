// 2x2, stride-2 max-pool over channels_last (NHWC) CPU tensors: forward and backward.
//
// torch's channels_last pooling kernel vectorises over channels 16 at a time and runs a
// scalar loop for the rest, so a map of 6 channels (LeNet-5's first) pools slowly. Here
// every loop runs along a whole contiguous image row, which the compiler vectorises
// whatever the channel count: the forward pass takes the maximum of each column pair
// of two input rows, then of each pair of neighbouring columns; the backward pass writes
// every input position once (the gradient or zero), so it needs no zero-filled buffer.
// Winners are torch's: the first maximum in row-major order, a NaN beating any number.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <bit>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// Storage types: bf16 is handled as its raw bits, which widen exactly to float.
inline float to_float(uint16_t bf16_bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bf16_bits) << 16);
}
inline float to_float(float value) { return value; }

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "max_pool2x2: a 4-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "max_pool2x2: bf16 or fp32");
  TORCH_CHECK(x.size(2) % 2 == 0 && x.size(3) % 2 == 0, "max_pool2x2: even height and width");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "max_pool2x2: channels_last");
}

// Calls f(std::integral_constant<int, C>{}) with C = c for 1 <= c <= 16, so that the
// per-channel loops below have a constant trip count; C = 0 (read c at run time) beyond.
template <typename F>
void with_channels(int64_t c, F&& f) {
  switch (c) {
#define MLSCALE_CASE(C) \
  case C:               \
    return f(std::integral_constant<int, C>{});
    MLSCALE_CASE(1) MLSCALE_CASE(2) MLSCALE_CASE(3) MLSCALE_CASE(4) MLSCALE_CASE(5)
    MLSCALE_CASE(6) MLSCALE_CASE(7) MLSCALE_CASE(8) MLSCALE_CASE(9) MLSCALE_CASE(10)
    MLSCALE_CASE(11) MLSCALE_CASE(12) MLSCALE_CASE(13) MLSCALE_CASE(14) MLSCALE_CASE(15)
    MLSCALE_CASE(16)
#undef MLSCALE_CASE
    default:
      return f(std::integral_constant<int, 0>{});
  }
}

// One output row from two input rows of `row` = width x channels values. The two long
// loops run over whole rows (the second compares every column with its right neighbour
// and keeps only the even columns' results); the short ones have C iterations.
template <int C, typename T>
void pool_row(const T* top, const T* bottom, int64_t row, int64_t runtime_c, T* out,
              uint8_t* won, T* column_max, uint8_t* column_row, T* pair_max, uint8_t* pair_won) {
  const int64_t c = C > 0 ? C : runtime_c;
  for (int64_t k = 0; k < row; ++k) {
    const T upper = top[k], lower = bottom[k];
    const float t = to_float(upper), b = to_float(lower);
    const bool take_bottom = (b > t) | (b != b);
    column_max[k] = take_bottom ? lower : upper;
    column_row[k] = take_bottom;
  }
  // On equal maxima the left column wins unless the right one's came from the top row
  // and the left one's from the bottom row (row-major order).
  for (int64_t k = 0; k + c < row; ++k) {
    const T left = column_max[k], right = column_max[k + c];
    const float a = to_float(left), b = to_float(right);
    const uint8_t a_row = column_row[k], b_row = column_row[k + c];
    const bool take_right = (b > a) | (b != b) | ((b == a) & (b_row < a_row));
    pair_max[k] = take_right ? right : left;
    pair_won[k] = take_right ? 2 * b_row + 1 : 2 * a_row;
  }
  for (int64_t left = 0, j = 0; left < row; left += 2 * c, j += c) {
    for (int64_t ch = 0; ch < c; ++ch) {
      out[j + ch] = pair_max[left + ch];
      won[j + ch] = pair_won[left + ch];
    }
  }
}

// The gradient of two input rows from one output row's gradient and winners: both are
// first widened to a whole input row (each column pair repeating its output), then one
// long loop picks, per position, the gradient or zero.
template <int C, typename T>
void unpool_row(const T* grad, const uint8_t* won, int64_t row, int64_t runtime_c,
                const uint8_t* parity, T* top, T* bottom, T* grad_wide, uint8_t* won_wide) {
  const int64_t c = C > 0 ? C : runtime_c;
  for (int64_t left = 0, j = 0; left < row; left += 2 * c, j += c) {
    for (int64_t ch = 0; ch < c; ++ch) {
      grad_wide[left + ch] = grad_wide[left + c + ch] = grad[j + ch];
      won_wide[left + ch] = won_wide[left + c + ch] = won[j + ch];
    }
  }
  const T zero{};
  for (int64_t k = 0; k < row; ++k) {  // plain loads first, so that the selects vectorise
    const T value = grad_wide[k];
    const uint8_t winner = won_wide[k], column = parity[k];
    top[k] = winner == column ? value : zero;
    bottom[k] = winner == column + 2 ? value : zero;
  }
}

template <typename T>
void forward_impl(const at::Tensor& x, at::Tensor& pooled, at::Tensor& winner) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t rows = n * (h / 2), row = w * c, out_row = row / 2;
  const T* in = static_cast<const T*>(x.const_data_ptr());
  T* out = static_cast<T*>(pooled.mutable_data_ptr());
  uint8_t* won = winner.mutable_data_ptr<uint8_t>();
  with_channels(c, [&](auto channels) {
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      std::vector<T> column_max(row), pair_max(row);
      std::vector<uint8_t> column_row(row), pair_won(row);
      for (int64_t r = begin; r < end; ++r) {
        const T* top = in + 2 * r * row;
        pool_row<decltype(channels)::value>(top, top + row, row, c, out + r * out_row,
                                            won + r * out_row, column_max.data(),
                                            column_row.data(), pair_max.data(), pair_won.data());
      }
    });
  });
}

template <typename T>
void backward_impl(const at::Tensor& grad, const at::Tensor& winner, at::Tensor& grad_x) {
  const int64_t n = grad.size(0), c = grad.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const int64_t rows = n * out_h, row = 2 * out_w * c, out_row = out_w * c;
  std::vector<uint8_t> parity(row);  // 0 in even columns, 1 in odd ones
  for (int64_t k = 0; k < row; ++k) parity[k] = (k / c) % 2;
  const T* g = static_cast<const T*>(grad.const_data_ptr());
  const uint8_t* won = winner.const_data_ptr<uint8_t>();
  T* out = static_cast<T*>(grad_x.mutable_data_ptr());
  with_channels(c, [&](auto channels) {
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      std::vector<T> grad_wide(row);
      std::vector<uint8_t> won_wide(row);
      for (int64_t r = begin; r < end; ++r) {
        T* top = out + 2 * r * row;
        unpool_row<decltype(channels)::value>(g + r * out_row, won + r * out_row, row, c,
                                              parity.data(), top, top + row, grad_wide.data(),
                                              won_wide.data());
      }
    });
  });
}

// The pooled tensor (channels_last) and, per output in NHWC order, which position of its
// window won: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x) {
  check_input(x);
  auto pooled = at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options(),
                          at::MemoryFormat::ChannelsLast);
  auto winner = at::empty({x.size(0), x.size(2) / 2, x.size(3) / 2, x.size(1)},
                          x.options().dtype(at::kByte));
  if (x.scalar_type() == at::kBFloat16) {
    forward_impl<uint16_t>(x, pooled, winner);
  } else {
    forward_impl<float>(x, pooled, winner);
  }
  return {pooled, winner};
}

at::Tensor backward(const at::Tensor& grad_pooled, const at::Tensor& winner) {
  const auto dtype = grad_pooled.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, "max_pool2x2: bf16 or fp32");
  const auto grad = grad_pooled.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(winner.scalar_type() == at::kByte && winner.is_contiguous() &&
                  winner.sizes() == at::IntArrayRef({grad.size(0), grad.size(2), grad.size(3),
                                                     grad.size(1)}),
              "max_pool2x2: winners of another shape");
  auto grad_x = at::empty({grad.size(0), grad.size(1), 2 * grad.size(2), 2 * grad.size(3)},
                          grad.options(), at::MemoryFormat::ChannelsLast);
  if (grad.scalar_type() == at::kBFloat16) {
    backward_impl<uint16_t>(grad, winner, grad_x);
  } else {
    backward_impl<float>(grad, winner, grad_x);
  }
  return grad_x;
}

}  // namespace

TORCH_LIBRARY(mlscale, m) {
  m.def("max_pool2x2_forward(Tensor x) -> (Tensor, Tensor)", &forward);
  m.def("max_pool2x2_backward(Tensor grad_pooled, Tensor winner) -> Tensor", &backward);
}
