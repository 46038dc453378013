"""Ahead-of-time compilation of generated kernels for a CUDA architecture, without a GPU.

Triton's standard library is either interpreted or compiled for a whole process (see interpreter.py),
so compilation runs in a child process with the interpreter off. It calls `triton.compile` with a CUDA
`GPUTarget` and reads registers and spills from the bundled ptxas (`-v`), shared memory from Triton's
metadata.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKER = "attnc.runtime.aot_worker"


class AOTError(Exception):
    """Compiling a generated kernel ahead of time failed."""


def parse_arch(arch: str) -> int:
    match = re.fullmatch(r"sm_?(\d+)a?", arch)
    if not match:
        raise ValueError(f"attnc: arch must look like 'sm_90', got {arch!r}")
    return int(match[1])


def compile_kernels(jobs: list[dict[str, Any]], python: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Compile each job ({path, kernel, signature, constexprs, num_warps, num_stages, capability}) in one
    child process; return {registers, spills, shared_memory} per job. `python`: the interpreter to compile
    with (default: this one), e.g. one with another Triton release installed; the worker needs only Triton.
    `progress(done, total)` is told after each job (a compile takes about a second)."""
    keys = [json.dumps([python, job], sort_keys=True) for job in jobs]
    missing = [job for key, job in zip(keys, jobs, strict=True) if key not in _REPORTS]
    if progress is not None:
        progress(len(jobs) - len(missing), len(jobs))
    if missing:
        if progress is None or python is not None:
            fresh = _compile_in_child(missing, python)
        else:
            fresh = _compile_in_child_reporting(missing, lambda done: progress(len(jobs) - len(missing) + done,
                                                                                len(jobs)))
        _REPORTS.update(zip((json.dumps([python, job], sort_keys=True) for job in missing), fresh, strict=True))
    return [dict(_REPORTS[key]) for key in keys]


# Reports of jobs compiled in this process, by the job's text: a job names its kernel file, whose name is the
# hash of its source, so the same text is the same compile (the default ladder's check and a later report
# of the same kernel share one).
_REPORTS: dict[str, dict[str, Any]] = {}


def _compile_in_child(jobs: list[dict[str, Any]], python: str | None) -> list[dict[str, Any]]:
    # "0", not unset: attnc's import would otherwise turn the interpreter on in a process without a GPU.
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    worker = str(Path(__file__).with_name("aot_worker.py"))
    command = [sys.executable, "-m", WORKER] if python is None else [python, worker]
    proc = subprocess.run(command, input=json.dumps(jobs), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise _failure(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _failure(stderr: str) -> AOTError:
    # Triton's own message (e.g. "NameError(...)") precedes the echoed source; keep both.
    lines = stderr.strip().splitlines()
    tail = "\n".join([line for line in lines if "Error" in line][-4:] + lines[-3:])
    return AOTError(f"attnc: ahead-of-time compilation failed:\n{tail}")


# The worker's loop, printing each result as it is ready (aot_worker.main prints them all at the end).
_REPORTING_WORKER = """\
import json, sys
from attnc.runtime.aot_worker import compile_job
for job in json.loads(sys.stdin.read()):
    print(json.dumps(compile_job(job)), flush=True)
"""


def _compile_in_child_reporting(jobs: list[dict[str, Any]], done: Callable[[int], None]) -> list[dict[str, Any]]:
    """`_compile_in_child` with this interpreter, calling `done(n)` as the child finishes each job."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # as in _compile_in_child
    with tempfile.TemporaryFile(mode="w+") as stderr:  # a file, so a chatty child cannot fill a pipe and stall
        proc = subprocess.Popen([sys.executable, "-c", _REPORTING_WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(jobs))
        proc.stdin.close()
        results = []
        for line in proc.stdout:
            if line.startswith("{"):  # a result; anything else is a library's chatter
                results.append(json.loads(line))
                done(len(results))
        returncode = proc.wait()
        stderr.seek(0)
        errors = stderr.read()
    if returncode != 0 or len(results) != len(jobs):
        raise _failure(errors)
    return results


def forward_job(path: Any, program: Any, dtype: Any, head_dim: int, head_dim_v: int, config: Any,
                use_block_mask: bool, capability: int) -> dict[str, Any]:
    """A compile job for the forward kernel at these shapes, with contiguous inputs (unit last strides,
    as the runtime specialises them)."""
    from attnc.codegen.forward import KERNEL_NAME
    from attnc.runtime.launch import Shapes, constexprs

    element, statistics, scalar = _argument_types(dtype)
    types = {name: element for name in ("Q", "K", "V", "OUT")}
    types |= {"LSE": statistics, "sm_scale": scalar}
    types |= {name: "*i32" for name in ("KV_NUM_BLOCKS", "KV_INDICES", "FULL_KV_NUM_BLOCKS", "FULL_KV_INDICES")}
    types |= _capture_types(program, scalar)
    shapes = Shapes(B=1, Hq=1, Hkv=1, Q_LEN=4096, KV_LEN=4096, D=head_dim, Dv=head_dim_v)
    block_sizes = (128, 128) if use_block_mask else None
    fitted = config.fit_to_blocks(128, 128) if use_block_mask else config
    consts = constexprs(shapes, fitted, dtype, block_sizes=block_sizes, has_full=use_block_mask,
                        has_mask=program.mask is not None, interpret=False)
    consts |= {name: 1 for name in ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_lm", "stride_in",
                                    "stride_fin")}
    return {"path": str(path), "kernel": KERNEL_NAME, "types": types, "constexprs": consts,
            "num_warps": fitted.num_warps, "num_stages": fitted.num_stages, "capability": capability}


def decode_job(path: Any, program: Any, dtype: Any, head_dim: int, group: int, query_rows: int, capability: int,
               page_size: int | None = None) -> dict[str, Any]:
    """A compile job for the split-KV decode kernel as kvcache_attention runs it (per-sequence lengths; pages of
    `page_size` read through a block table, or contiguous caches) for a GQA group of `group` query heads and
    `query_rows` new tokens."""
    from attnc.codegen.decode import DECODE_KERNEL_NAME
    from attnc.codegen.emit import POINTER_TYPE
    from attnc.ir.dtypes import DType
    from attnc.runtime.decode import NUM_STAGES, NUM_WARPS, decode_constexprs, rows_per_program
    from attnc.runtime.launch import Shapes

    element = POINTER_TYPE[DType.from_torch(dtype)]
    types = {name: element for name in ("Q", "K", "V")}
    types |= {"OUT_PART": "*fp32", "LSE_PART": "*fp32", "TILES": "*i32", "TILE_FULL": "*i8", "N_TILES": "*i32",
              "SEQ_LENS": "*i32", "BLOCK_TABLE": "*i32", "sm_scale": "fp32"} | _capture_types(program)
    shapes = Shapes(B=1, Hq=group, Hkv=1, Q_LEN=query_rows, KV_LEN=32768, D=head_dim, Dv=head_dim)
    consts = decode_constexprs(shapes, dtype, rows_per_program(shapes), 1.0, False, has_lengths=True,
                               page_size=page_size)
    consts |= {name: 1 for name in ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_lm", "stride_tn")}
    return {"path": str(path), "kernel": DECODE_KERNEL_NAME, "types": types, "constexprs": consts,
            "num_warps": NUM_WARPS, "num_stages": NUM_STAGES, "capability": capability}


def combine_job(dtype: Any, head_dim_v: int, capability: int) -> dict[str, Any]:
    """A compile job for split-KV decoding's combine (`attnc.runtime.decode_combine`) writing `dtype` outputs."""
    from attnc.codegen.emit import POINTER_TYPE
    from attnc.ir.dtypes import DType
    from attnc.runtime import decode_combine
    from attnc.runtime.config import next_power_of_two

    types = {"OUT_PART": "*fp32", "LSE_PART": "*fp32", "OUT": POINTER_TYPE[DType.from_torch(dtype)], "LSE": "*fp32"}
    consts = {"HEAD_DV": head_dim_v, "DV_PAD": next_power_of_two(head_dim_v), "stride_pd": 1, "stride_rm": 1}
    return {"path": decode_combine.__file__, "kernel": "combine_splits", "types": types, "constexprs": consts,
            "num_warps": 1, "num_stages": 1, "capability": capability}


def block_map_job(path: Any, program: Any, capability: int, block_size: tuple[int, int] = (128, 128)) -> dict[str, Any]:
    """A compile job for the block-map builder with the launch settings a GPU run uses."""
    from attnc.codegen.block_map import KERNEL_NAME
    from attnc.runtime.device_block_map import launch_constants

    consts = launch_constants(*block_size, n_kv_blocks=1 << 10, interpret=False)
    num_warps = consts.pop("num_warps")
    return {"path": str(path), "kernel": KERNEL_NAME, "types": {"CLASSES": "*i8", **_capture_types(program)},
            "constexprs": consts, "num_warps": num_warps, "num_stages": 1, "capability": capability}


def _argument_types(dtype: Any) -> tuple[str, str, str]:
    """(inputs' pointer type, row statistics' and gradient buffers' pointer type, float scalars' type) of the
    kernels for inputs of `dtype`, as a launch passes them: the statistics and gradient buffers are in the compute
    dtype (`launch.compute_dtype`), and a float64 kernel gets each float scalar as its 64 bits in an int64
    (`launch.scalar_argument`)."""
    import torch

    from attnc.codegen.emit import POINTER_TYPE
    from attnc.ir.dtypes import DType
    from attnc.runtime.launch import compute_dtype

    compute = compute_dtype(dtype)
    scalar = "i64" if compute == torch.float64 else "fp32"
    return POINTER_TYPE[DType.from_torch(dtype)], POINTER_TYPE[DType.from_torch(compute)], scalar


def _capture_types(program: Any, float_scalar: str = "fp32") -> dict[str, str]:
    """The captured tensors' pointer types and the parameters' types (a float parameter as `float_scalar`)."""
    from attnc.codegen.emit import POINTER_TYPE

    types = {f"buf{slot}": POINTER_TYPE[spec.dtype] for slot, spec in enumerate(program.tensors)}
    params = enumerate(program.params)
    return types | {f"param{slot}": float_scalar if spec.dtype.is_float else "i32" for slot, spec in params}


def backward_jobs(path: Any, program: Any, grad_slots: tuple[int, ...], dtype: Any, head_dim: int, head_dim_v: int,
                  configs: Any, capability: int) -> dict[str, dict[str, Any]]:
    """Compile jobs for the two backward kernels, each with its closed-form tile loops and with a
    BlockMask's lists (blocks of 128), every captured gradient on."""
    from attnc.codegen.backward import DKDV_KERNEL, DQ_KERNEL
    from attnc.runtime.launch import Shapes, constexprs

    element, statistics, scalar = _argument_types(dtype)
    types = {name: element for name in ("Q", "K", "V", "DO", "DQ", "DK", "DV")}
    types |= {"LSE": statistics, "DELTA": statistics, "sm_scale": scalar} | _capture_types(program, scalar)
    types |= {f"gbuf{slot}": statistics for slot in grad_slots}
    types |= {name: "*i32" for name in ("KV_NUM_BLOCKS", "KV_INDICES", "FULL_KV_NUM_BLOCKS", "FULL_KV_INDICES",
                                        "Q_NUM_BLOCKS", "Q_INDICES", "FULL_Q_NUM_BLOCKS", "FULL_Q_INDICES")}
    shapes = Shapes(B=1, Hq=1, Hkv=1, Q_LEN=4096, KV_LEN=4096, D=head_dim, Dv=head_dim_v)
    unit = {name: 1 for name in ("stride_qd", "stride_kd", "stride_vd", "stride_dod", "stride_lm", "stride_dqd",
                                 "stride_dkd", "stride_dvd")}
    unit |= {name: 1 for name in ("stride_in", "stride_im", "stride_fin", "stride_fim")}
    jobs = {}
    for name, kernel, config in (("backward_dkdv", DKDV_KERNEL, configs.dkdv), ("backward_dq", DQ_KERNEL, configs.dq)):
        for suffix, block_sizes in (("", None), ("_block_mask", (128, 128))):
            fitted = config.fit_to_blocks(*block_sizes) if block_sizes else config
            consts = constexprs(shapes, fitted, dtype, block_sizes=block_sizes, has_full=block_sizes is not None,
                                has_mask=program.mask is not None, interpret=False)
            consts |= {"Q_EVEN": True} | unit | {f"GRAD{slot}": True for slot in grad_slots}
            jobs[name + suffix] = {"path": str(path), "kernel": kernel, "types": types, "constexprs": consts,
                                   "num_warps": fitted.num_warps, "num_stages": fitted.num_stages,
                                   "capability": capability}
    return jobs
