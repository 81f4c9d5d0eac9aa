"""Registers, spills and shared memory of every CUDA kernel, from a build log with ptxas's report.

    DCAE_EXT_PTXAS_VERBOSE=1 TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace > build.log 2>&1
    python benchmarks/ptxas_report.py build.log [--out benchmarks/results/ptxas-sm90.md]

The build needs the CUDA toolkit, not a GPU. A kernel that spills (spill stores or loads above 0
bytes) or uses more than 128 registers (fewer than 16 resident warps of 32 threads per SM on
sm_80/sm_90) is marked.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\d+a?)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"ptxas info\s*: Used (\d+) registers(?:.*?(\d+) bytes smem)?")
REGISTER_BUDGET = 128


def parse(log: str) -> list[dict]:
    """One dict per (kernel, arch): registers, stack, spill stores / loads, static shared memory."""
    kernels, current = [], None
    for line in log.splitlines():
        if match := ENTRY.search(line):
            current = {"mangled": match.group(1), "arch": match.group(2), "registers": None, "stack": 0,
                       "spill_stores": 0, "spill_loads": 0, "smem": 0}
            kernels.append(current)
        elif current is not None and (match := FRAME.search(line)):
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, match.groups())
        elif current is not None and (match := USED.search(line)):
            current["registers"] = int(match.group(1))
            current["smem"] = int(match.group(2) or 0)
    return kernels


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name: str) -> str:
    """`void dcae_ext::(anonymous namespace)::state_kernel<float, 32>(...)` -> `state_kernel<float, 32>`."""
    name = re.sub(r"\(anonymous namespace\)::", "", name.removeprefix("void "))
    depth, cut = 0, len(name)
    for i, char in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        depth += char == "<"
        depth -= char == ">"
        if char == "(" and depth == 0:
            cut = i
            break
    return name[:cut].removeprefix("dcae_ext::")


def table(kernels: list[dict]) -> str:
    names = demangle([k["mangled"] for k in kernels])
    rows = ["| kernel | arch | registers | stack B | spill stores B | spill loads B | static smem B | |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kernel, name in sorted(zip(kernels, names), key=lambda item: (short(item[1]), item[0]["arch"])):
        flags = []
        if kernel["spill_stores"] or kernel["spill_loads"]:
            flags.append("spills")
        if (kernel["registers"] or 0) > REGISTER_BUDGET:
            flags.append(f"> {REGISTER_BUDGET} registers")
        rows.append(f"| `{short(name)}` | {kernel['arch']} | {kernel['registers']} | {kernel['stack']} | "
                    f"{kernel['spill_stores']} | {kernel['spill_loads']} | {kernel['smem']} | {', '.join(flags)} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a build log made with DCAE_EXT_PTXAS_VERBOSE=1")
    parser.add_argument("--out", help="write the Markdown table there (default: print it)")
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as stream:
        kernels = parse(stream.read())
    if not kernels:
        print(f"{args.log}: no ptxas report in it (build with DCAE_EXT_PTXAS_VERBOSE=1 and the CUDA kernels)",
              file=sys.stderr)
        return 1
    text = table(kernels)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as stream:
            stream.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
