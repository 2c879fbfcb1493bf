// Numbers in spectrum_fast._C's error messages, as strings.
//
// Why: on the device (torch 2.11 CUDA 13.0 wheel, gcc 13.3, nvcc 13.0) a TORCH_CHECK whose message
// streamed an integer (std::ostream << long, also what printing a tensor's sizes does) crashed the
// process with SIGSEGV inside std::ostream::_M_insert<long> instead of raising, from a .cu and from
// a .cpp file alike; strings and c10's own printers (device, dtype) raise fine (csrc/NOTES.md has the
// backtrace). std::to_string does not go through a stream's locale facets.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace spectrum_fast {

inline std::string num(int64_t value) { return std::to_string(value); }

// A floating-point number, "%g" (std::to_string would print -1e-300 as "-0.000000").
inline std::string real(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

inline std::string dims(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

}  // namespace spectrum_fast
