"""Child process of `aot.compile_kernels`: reads jobs as JSON on stdin, prints results as JSON.

A job is either a kernel's signature (`types`, `constexprs`: every pointer and int unspecialised) or a
recorded launch (`launch_args`, `launch_kwargs`: the values passed, specialised as Triton's JIT does).
A job with `"disassemble": true` also gets the SASS of the cubin Triton built (`cuobjdump -sass`; what a
launch runs) and the warning lines ptxas printed (e.g. C7515, wgmma serialized); parsing them is the
parent's business (`attnc.perf.sass`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_REGISTERS = re.compile(r"Used (\d+) registers")
_MESSAGE_CODE = re.compile(r"\(C\d{4}\)")
_CUBIN_REGISTERS = re.compile(r"REG:(\d+)")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _load_kernel(path: str, name: str) -> Any:
    # compiled from the text, not imported: no bytecode is read from or written to the cache's __pycache__
    module = types.ModuleType(f"attnc_aot_{abs(hash(path))}")
    module.__file__ = path
    sys.modules[module.__name__] = module
    exec(compile(Path(path).read_text(), path, "exec", dont_inherit=True), module.__dict__)
    return getattr(module, name)


def _ptxas(capability: int) -> str:
    from triton.backends.nvidia import compiler as nvidia

    try:
        return nvidia.get_ptxas(capability).path
    except TypeError:  # older Triton: get_ptxas() takes no architecture
        return nvidia.get_ptxas().path


def _ptxas_report(ptx: str, capability: int) -> tuple[int, int, list[str]]:
    """(registers, spilled bytes stored + loaded, ptxas's warning lines) from `ptxas -v` on the PTX."""
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
    # ptxas reports performance problems as numbered "info" lines, e.g. "(C7515) Potential Performance Loss:
    # wgmma.mma_async instructions are serialized ...", and problems as "warning" lines; keep both, in
    # ptxas's words but for the temporary file's name, which means nothing to a reader
    warnings = [line.strip().replace(str(src), "kernel.ptx") for line in text.splitlines()
                if "warning" in line or _MESSAGE_CODE.search(line)]
    return int(registers[1]), int(spills[1]) + int(spills[2]), warnings


def _disassemble(cubin: bytes, capability: int) -> tuple[str, int | None]:
    """The SASS of `cubin` and the registers it uses (which the ptxas rerun above, without Triton's exact
    flags, may miss by a few), by the cuobjdump shipped next to Triton's ptxas."""
    tool = str(Path(_ptxas(capability)).with_name("cuobjdump"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    registers = _CUBIN_REGISTERS.search(usage)
    return sass, int(registers[1]) if registers else None


# Triton's JIT specialises a launch on its arguments (runtime/jit.py, native_specialize_impl): an int equal to
# 1 becomes a constant, an int that is a multiple of 16 and a tensor whose address is 16-byte aligned get
# `tt.divisibility = 16`, which is what lets loads vectorise. Parameters marked do_not_specialize get none.
_DIVISIBLE = [["tt.divisibility", 16]]


def _launch_specialization(fn: Any, job: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], dict[Any, Any]]:
    """(signature, constexprs, attrs) of a recorded launch: `launch_args` / `launch_kwargs` describe the
    values passed (`attnc.perf.launches.describe`), specialised as the JIT would."""
    values = dict(zip(fn.arg_names, job["launch_args"], strict=False)) | job["launch_kwargs"]
    signature: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[Any, Any] = {}
    for index, param in enumerate(fn.params):
        name = param.name
        if name not in values:
            raise ValueError(f"the recorded launch of {fn.__name__} passes no {name}")
        kind, *rest = values[name]
        specialize = not getattr(param, "do_not_specialize", False)
        align = specialize and not getattr(param, "do_not_specialize_on_alignment", False)
        if param.is_constexpr or kind in ("none", "str") or (kind == "int" and specialize and rest[0] == 1):
            signature[name], consts[name] = "constexpr", None if kind == "none" else rest[0]
        elif kind == "tensor":
            signature[name] = "*" + rest[0]
            if align and rest[1]:
                attrs[(index,)] = _DIVISIBLE
        elif kind == "int":
            value = rest[0]
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64" if value < 2**63 else "u64"
            if align and value % 16 == 0:
                attrs[(index,)] = _DIVISIBLE
        else:  # "float", "bool"
            signature[name] = {"float": "fp32", "bool": "u1"}[kind]
    return signature, consts, attrs


def compile_job(job: dict[str, Any]) -> dict[str, Any]:
    fn = _load_kernel(job["path"], job["kernel"])
    if "launch_args" in job:
        signature, consts, attrs = _launch_specialization(fn, job)
    else:
        # a job may name constants of a sibling kernel (the two backward kernels share theirs): keep this one's
        consts = {name: value for name, value in job["constexprs"].items() if name in fn.arg_names}
        signature = {name: "constexpr" if name in consts else job["types"].get(name, "i32") for name in fn.arg_names}
        attrs = {}
    source = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    compiled = triton.compile(source, target=GPUTarget("cuda", job["capability"], 32), options=options)
    registers, spills, warnings = _ptxas_report(compiled.asm["ptx"], job["capability"])
    ttgir = compiled.asm.get("ttgir", "")
    result = {"registers": registers, "spills": spills, "shared_memory": compiled.metadata.shared,
              # whether Triton split a loop into warp partitions, and whether it issues TMA copies
              "warp_specialized": "ttg.warp_specialize" in ttgir, "tma": "async_tma" in ttgir}
    if job.get("disassemble"):
        sass, cubin_registers = _disassemble(compiled.asm["cubin"], job["capability"])
        result |= {"sass": sass, "cubin_registers": cubin_registers, "ptxas_warnings": warnings}
    return result


def main() -> None:
    jobs = json.loads(sys.stdin.read())
    print(json.dumps([compile_job(job) for job in jobs]))


if __name__ == "__main__":
    main()
