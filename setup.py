"""Build dcae-ext: a CUDAExtension when torch has CUDA and a toolkit is found, a CppExtension otherwise.

Environment:
  CUDA_HOME / CUDA_PATH   toolkit root (else the real root behind `nvcc`, else /usr/local/cuda)
  FORCE_CUDA=1            build the CUDA kernels even if detection says no
  DCAE_EXT_CPU_ONLY=1     never build CUDA kernels
  TORCH_CUDA_ARCH_LIST    target architectures (default with no GPU visible: 8.0;9.0+PTX)
  DCAE_EXT_PTXAS_VERBOSE  1: ptxas reports each kernel's registers and spills (benchmarks/ptxas_report.py)
  MAX_JOBS                parallel compile jobs (ninja)
"""
import glob
import os
import re
import shutil
import subprocess
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and (
        os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
        or glob.glob(os.path.join(root, "targets", "*", "include", "cuda_runtime.h"))
    )


def _toolkit_behind_nvcc(nvcc):
    """Ask nvcc where it lives: a wrapper script on PATH hides the real root from realpath."""
    real = os.path.realpath(nvcc)
    candidate = os.path.dirname(os.path.dirname(real))
    if _is_toolkit(candidate):
        return candidate
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if match:
        candidate = os.path.realpath(os.path.dirname(match.group(1).strip()))
        if _is_toolkit(candidate):
            return candidate
    return None


def find_cuda_toolkit():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and _is_toolkit(os.path.realpath(root)):
            return os.path.realpath(root)
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_behind_nvcc(nvcc)
        if root:
            return root
    for root in ("/usr/local/cuda", "/opt/cuda"):
        if _is_toolkit(os.path.realpath(root)):
            return os.path.realpath(root)
    return None


def pip_cuda_include_dirs(toolkit):
    """Headers torch's CUDA build includes (cusparse.h, cublas_v2.h, ...) that a slim toolkit lacks
    but the nvidia-* wheels torch depends on ship."""
    if glob.glob(os.path.join(toolkit, "include", "cusparse.h")) or glob.glob(
            os.path.join(toolkit, "targets", "*", "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in getattr(nvidia, "__path__", []):
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


def want_cuda(toolkit):
    import torch

    if os.environ.get("DCAE_EXT_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if toolkit is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return torch.version.cuda is not None and toolkit is not None


def build_extension():
    toolkit = find_cuda_toolkit()
    if toolkit:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import time.
        os.environ["CUDA_HOME"] = toolkit
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = want_cuda(toolkit)
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    # -fno-trapping-math (as torch's own build): lets gcc if-convert float selects, so the
    # branch-free exp / log loops of the CPU kernels vectorise.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"] if os.name != "nt" else ["-O3", "/openmp"]
    macros = []
    arch_list = ""
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
        sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
        macros.append(("DCAE_EXT_WITH_CUDA", None))
    macros.append(("DCAE_EXT_CUDA_ARCH_LIST", '"%s"' % arch_list))
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        include_dirs += pip_cuda_include_dirs(toolkit)
    kwargs = dict(
        name="dcae_ext._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
                            + (["-Xptxas=-v"] if os.environ.get("DCAE_EXT_PTXAS_VERBOSE") == "1" else [])},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if with_cuda:
        return CUDAExtension(**kwargs)
    kwargs["extra_compile_args"] = {"cxx": cxx_flags}
    return CppExtension(**kwargs)


def main():
    extension = build_extension()  # first: it sets CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=find_packages(include=["dcae_ext", "dcae_ext.*"]),
        ext_modules=[extension],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
