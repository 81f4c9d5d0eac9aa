// Importing dcae_ext._C runs the static TORCH_LIBRARY registrations of every op file.
// The module itself only carries build facts (which backends, which CUDA archs).
#include <Python.h>
#include <torch/library.h>

#ifndef DCAE_EXT_CUDA_ARCH_LIST
#define DCAE_EXT_CUDA_ARCH_LIST ""
#endif

// Schemas live beside each op (TORCH_LIBRARY_FRAGMENT in csrc/<op>/<op>.cpp);
// this block creates the library they extend.
TORCH_LIBRARY(dcae_ext, m) {}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "dcae-ext compiled kernels", -1, nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef DCAE_EXT_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(module, "cuda_arch_list", DCAE_EXT_CUDA_ARCH_LIST);
  return module;
}
}
