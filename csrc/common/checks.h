// Argument checks of the registered ops. Each message names the argument, so a wrong call from
// Python or from torch.ops reads as a ValueError about that argument, never a crash.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#define DCAE_CHECK_ARG(cond, name, ...) \
  TORCH_CHECK_VALUE(cond, "dcae_ext: argument '", name, "': ", __VA_ARGS__)

#define DCAE_CHECK_DIM(t, name, ndim)                                         \
  DCAE_CHECK_ARG((t).dim() == (ndim), name, "expected a ", ndim,             \
                 "-D tensor, got shape ", (t).sizes())

#define DCAE_CHECK_FLOATING(t, name)                                          \
  DCAE_CHECK_ARG(at::isFloatingType((t).scalar_type()), name,                 \
                 "expected a floating-point tensor, got ", (t).scalar_type())

#define DCAE_CHECK_SAME_DTYPE(a, name_a, b, name_b)                           \
  DCAE_CHECK_ARG((a).scalar_type() == (b).scalar_type(), name_b,              \
                 "dtype ", (b).scalar_type(), " differs from ", name_a,        \
                 "'s dtype ", (a).scalar_type())

#define DCAE_CHECK_SAME_DEVICE(a, name_a, b, name_b)                          \
  DCAE_CHECK_ARG((a).device() == (b).device(), name_b, "is on ",              \
                 (b).device(), " but ", name_a, " is on ", (a).device())

#define DCAE_CHECK_DEVICE_TYPE(t, name, device_type)                          \
  DCAE_CHECK_ARG((t).device().type() == (device_type), name, "expected a ",   \
                 c10::DeviceTypeName(device_type, /*lower_case=*/true),        \
                 " tensor, got one on ", (t).device())
