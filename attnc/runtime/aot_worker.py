"""Child process of `aot.compile_kernels`: reads jobs as JSON on stdin, prints results as JSON."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _load_kernel(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"attnc_aot_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def _ptxas(capability: int) -> str:
    from triton.backends.nvidia import compiler as nvidia

    try:
        return nvidia.get_ptxas(capability).path
    except TypeError:  # older Triton: get_ptxas() takes no architecture
        return nvidia.get_ptxas().path


def _registers(ptx: str, capability: int) -> tuple[int, int]:
    suffix = "a" if capability >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        out = subprocess.run([_ptxas(capability), "-v", f"--gpu-name=sm_{capability}{suffix}", str(src),
                              "-o", str(src.with_suffix(".cubin"))], capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    registers, spills = _REGISTERS.search(text), _SPILLS.search(text)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output: {text}")
    return int(registers[1]), int(spills[1]) + int(spills[2])


def compile_job(job: dict[str, Any]) -> dict[str, Any]:
    fn = _load_kernel(job["path"], job["kernel"])
    # a job may name constants of a sibling kernel (the two backward kernels share theirs): keep this one's
    consts = {name: value for name, value in job["constexprs"].items() if name in fn.arg_names}
    signature = {name: "constexpr" if name in consts else job["types"].get(name, "i32") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature, constexprs=consts)
    options = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    compiled = triton.compile(source, target=GPUTarget("cuda", job["capability"], 32), options=options)
    registers, spills = _registers(compiled.asm["ptx"], job["capability"])
    ttgir = compiled.asm.get("ttgir", "")
    return {"registers": registers, "spills": spills, "shared_memory": compiled.metadata.shared,
            # whether Triton split a loop into warp partitions, and whether it issues TMA copies
            "warp_specialized": "ttg.warp_specialize" in ttgir, "tma": "async_tma" in ttgir}


def main() -> None:
    jobs = json.loads(sys.stdin.read())
    print(json.dumps([compile_job(job) for job in jobs]))


if __name__ == "__main__":
    main()
