"""benchmarks/ptxas_report.py: registers and spills read from a build log."""
import os
import runpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
report = runpy.run_path(os.path.join(ROOT, "benchmarks", "ptxas_report.py"))

LOG = """\
[2/3] /usr/local/cuda/bin/nvcc ... -Xptxas=-v -c csrc/linear_attention/linear_attention_cuda.cu
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8dcae_ext12_GLOBAL__N_112query_kernelIfLi64EEEvPKT_' for 'sm_90'
ptxas info    : Function properties for _ZN8dcae_ext12_GLOBAL__N_112query_kernelIfLi64EEEvPKT_
    392 bytes stack frame, 388 bytes spill stores, 392 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8448 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN8dcae_ext12_GLOBAL__N_112state_kernelIfLi32EEEvPKT_' for 'sm_80'
ptxas info    : Function properties for _ZN8dcae_ext12_GLOBAL__N_112state_kernelIfLi32EEEvPKT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, 400 bytes cmem[0]
"""


def test_each_kernel_gets_its_registers_spills_and_shared_memory():
    kernels = report["parse"](LOG)
    assert [(k["arch"], k["registers"], k["spill_stores"], k["spill_loads"], k["smem"]) for k in kernels] == [
        ("sm_90", 255, 388, 392, 8448), ("sm_80", 40, 0, 0, 0)]
    text = report["table"](kernels)
    assert "| `query_kernel<float, 64>` | sm_90 | 255 | 392 | 388 | 392 | 8448 | spills, > 128 registers |" in text
    assert "| `state_kernel<float, 32>` | sm_80 | 40 | 0 | 0 | 0 | 0 |  |" in text


def test_a_log_without_a_report_says_how_to_make_one(tmp_path, capsys):
    log = tmp_path / "build.log"
    log.write_text("[1/1] c++ -c csrc/registration.cpp\n")
    assert report["main"]([str(log)]) == 1
    assert "DCAE_EXT_PTXAS_VERBOSE=1" in capsys.readouterr().err
