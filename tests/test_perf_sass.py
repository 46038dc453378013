"""attnc.perf.sass on small SASS snippets: parsing, natural loops (with out-of-line slow paths and branches
inside the body), instruction categories, tensor-core work and the pipelining heuristic."""

from __future__ import annotations

import types

import pytest

from attnc.perf import sass
from attnc.runtime.aot_worker import _launch_specialization


def listing(*lines: str, name: str = "kernel") -> str:
    """cuobjdump -sass text: instruction lines at 16-byte steps, each followed by its encoding's second half."""
    body = [f"\t\tFunction : {name}", '\t.headerflags\t@"EF_CUDA_SM90"']
    for n, text in enumerate(lines):
        body.append(f"        /*{16 * n:04x}*/                   {text} ;    /* 0x000000000000790a */")
        body.append("                                                                 /* 0x000fe20000000800 */")
    return "\n\tcode for sm_90a\n" + "\n".join(body) + "\n\t\t..........\n"


def only_function(text: str) -> sass.Function:
    (function,) = sass.parse(text)
    return function


def test_parse_reads_address_predicate_opcode_and_operands():
    function = only_function(listing("LDC R1, c[0x0][0x28]", "@!P0 HGMMA.64x16x16.F32.BF16 R56, gdesc[UR8], RZ, !UPT",
                                     "EXIT", name="attnc_forward"))
    assert function.name == "attnc_forward"
    first, mma, last = function.instructions
    assert (first.address, first.predicate, first.opcode, first.operands) == (0, "", "LDC", "R1, c[0x0][0x28]")
    assert (mma.address, mma.predicate, mma.mnemonic) == (0x10, "@!P0", "HGMMA")
    assert mma.modifiers == ("64x16x16", "F32", "BF16") and mma.conditional
    assert last.opcode == "EXIT" and last.operands == ""


def test_parse_splits_functions():
    text = listing("NOP", name="a") + listing("EXIT", name="b")
    assert [f.name for f in sass.parse(text)] == ["a", "b"]


# A loop 0x10..0x50 with a forward branch over two instructions inside it, then EXIT and the parking BRA.
LOOP_WITH_BRANCH = listing(
    "MOV R0, RZ",                # 0x00
    "IADD3 R0, R0, 0x1, RZ",     # 0x10  header
    "@P1 BRA 0x50",              # 0x20  skip the next two
    "FMUL R2, R2, R3",           # 0x30
    "FADD R2, R2, R3",           # 0x40
    "ISETP.GE.AND P0, PT, R0, R4, PT",  # 0x50
    "@!P0 BRA 0x10",             # 0x60  back edge
    "EXIT",                      # 0x70
    "BRA 0x80",                  # 0x80  parks the thread: not a loop
)


def test_loop_from_back_edge_with_static_count_and_both_paths():
    (loop,) = sass.find_loops(only_function(LOOP_WITH_BRANCH))
    assert (loop.start, loop.end, loop.size, loop.out_of_line) == (0x10, 0x60, 6, 0)
    assert (loop.shortest_path, loop.longest_path) == (4, 6)
    assert loop.innermost and loop.tensor_ops == 0


def test_nested_loops_and_innermost():
    text = listing(
        "MOV R0, RZ",                 # 0x00
        "MOV R1, RZ",                 # 0x10  outer header
        "HMMA.16816.F32.BF16 R4, R8, R12, R4",  # 0x20  inner header
        "@P0 BRA 0x20",               # 0x30  inner back edge
        "IADD3 R1, R1, 0x1, RZ",      # 0x40
        "@P1 BRA 0x10",               # 0x50  outer back edge
        "EXIT",                       # 0x60
    )
    outer, inner = sass.find_loops(only_function(text))
    assert (outer.start, outer.end, outer.size) == (0x10, 0x50, 5)
    assert (inner.start, inner.end, inner.size) == (0x20, 0x30, 2)
    assert outer.contains(inner) and not inner.contains(outer)
    assert inner.innermost and not outer.innermost
    assert outer.tensor_ops == inner.tensor_ops == 1
    # the inner loop's back edge is not taken on a path through one outer iteration
    assert outer.shortest_path == outer.longest_path == 5


def test_out_of_line_retry_belongs_to_the_loop_it_returns_to():
    """ptxas places an mbarrier wait's retry after the function's end; it jumps back into the loop. That
    backward jump is not a loop of its own, and the retry counts as out-of-line body of the real loop."""
    text = listing(
        "MOV R0, RZ",                                       # 0x00
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2",     # 0x10  header: wait for the tile
        "@!P0 BRA 0x80",                                    # 0x20  slow path, out of line
        "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24",    # 0x30
        "UTMALDG.2D [UR8], [UR12]",                         # 0x40  the copy for a later iteration
        "@P1 BRA 0x10",                                     # 0x50  back edge
        "EXIT",                                             # 0x60
        "BRA 0x70",                                         # 0x70
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2",     # 0x80  retry ...
        "@!P0 BRA 0x80",                                    # 0x90  ... until ready
        "BRA 0x30",                                         # 0xa0  back into the loop
    )
    loops = sass.find_loops(only_function(text))
    main, retry = loops
    assert (main.start, main.end, main.size, main.out_of_line) == (0x10, 0x50, 8, 3)
    assert (main.shortest_path, main.longest_path) == (5, 8)
    assert (retry.start, retry.end, retry.size) == (0x80, 0x90, 2) and retry.tensor_ops == 0
    assert main.contains(retry) and not main.innermost
    pipelining = sass.pipelining(main)
    assert pipelining.pipelined and pipelining.how == "TMA copies in flight across iterations"


@pytest.mark.parametrize(("opcode", "expected"), [
    ("HGMMA.64x64x16.F32.BF16", "tensor"), ("HMMA.16816.F32.BF16", "tensor"), ("MUFU.EX2", "mufu"),
    ("FFMA.FTZ", "fp32"), ("FMNMX", "fp32"), ("FSETP.GEU.AND", "fp32"), ("FSEL", "fp32"), ("HFMA2.MMA", "fp16x2"),
    ("F2FP.BF16.F32.PACK_AB", "convert"), ("I2FP.F32.S32", "convert"),
    ("IADD3", "int"), ("LOP3.LUT", "int"), ("ISETP.GE.AND", "int"), ("SEL", "int"), ("VIADDMNMX", "int"),
    ("IMAD.HI.U32", "int"), ("LEA.HI", "int"), ("SHF.R.S32.HI", "int"),
    ("IMAD.WIDE.U32", "int64"), ("IMAD.WIDE", "int64"), ("IADD3.X", "int64"), ("LEA.HI.X.SX32", "int64"),
    ("ISETP.GE.U32.AND.EX", "int64"), ("SHF.L.U64.HI", "int64"), ("IMAD.X", "int64"),
    ("IMAD.MOV.U32", "move"), ("MOV", "move"), ("S2R", "move"), ("UIADD3", "uniform"), ("ULDC.64", "uniform"),
    ("LDG.E.128", "global"), ("LDGSTS.E.BYPASS.128", "global"), ("LDS.128", "shared"), ("LDSM.16.M88.4", "shared"),
    ("UTMALDG.2D", "tma"), ("UBLKCP.S.G", "tma"), ("STL", "local"), ("LDC.64", "const"), ("SHFL.BFLY", "warp"),
    ("BAR.SYNC.DEFER_BLOCKING", "sync"), ("WARPGROUP.DEPBAR.LE", "sync"), ("SYNCS.ARRIVE.TRANS64", "sync"),
    ("BRA", "control"), ("EXIT", "control"), ("NOP", "control"),
])
def test_categories(opcode, expected):
    assert sass.category(sass.Instruction(0, "", opcode, "")) == expected


def test_census_partitions_the_body():
    (loop,) = sass.find_loops(only_function(LOOP_WITH_BRANCH))
    counts = sass.census(loop.body)
    assert tuple(counts) == sass.CATEGORIES and sum(counts.values()) == loop.size
    assert (counts["int"], counts["fp32"], counts["control"]) == (2, 2, 2)
    assert sass.opcode_counts(loop.body) == {"BRA": 2, "IADD3": 1, "FMUL": 1, "FADD": 1, "ISETP": 1}


def test_tensor_work_and_matmul_kind():
    wgmma = sass.Instruction(0, "", "HGMMA.64x128x16.F32.BF16", "R24, gdesc[UR8], R24")
    mma = sass.Instruction(0, "", "HMMA.16816.F32.BF16", "R4, R8, R12, R4")
    # an HGMMA is one 64x128x16 product per warpgroup: 8 warps are two warpgroups
    assert sass.tensor_macs([wgmma], num_warps=8) == 2 * 64 * 128 * 16
    assert sass.tensor_macs([mma], num_warps=4) == 4 * 16 * 8 * 16
    assert sass.matmul_kind([wgmma]) == "wgmma" and sass.matmul_kind([mma, wgmma]) == "wgmma + mma.sync"
    assert sass.matmul_kind([]) == "none"


def _loop_of(*body: str) -> sass.Loop:
    text = listing("MOV R0, RZ", *body, "@P0 BRA 0x10", "EXIT")
    (loop,) = sass.find_loops(only_function(text))
    return loop


def test_pipelining_heuristic():
    in_flight = _loop_of("DEPBAR.LE SB0, 0x1", "HMMA.16816.F32.BF16 R4, R8, R12, R4",
                         "LDGSTS.E.BYPASS.128 [R2], [R4.64]", "LDGDEPBAR")
    assert sass.pipelining(in_flight).pipelined
    assert sass.pipelining(in_flight).how == "cp.async copies in flight across iterations"
    waited = _loop_of("UTMALDG.2D [UR8], [UR12]", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2",
                      "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24")
    assert not sass.pipelining(waited).pipelined
    assert sass.pipelining(waited).how == "TMA copies waited for in the same iteration"
    staged = _loop_of("LDG.E.U16 R2, desc[UR4][R4.64]", "STS.U16 [R6], R2", "BAR.SYNC.DEFER_BLOCKING 0x0")
    assert sass.pipelining(staged).how == "register-staged (LDG then STS)"
    assert sass.pipelining(_loop_of("FADD R2, R2, R3")).how == "no global loads"


def test_launch_specialization_follows_the_jit_rules():
    """Ints equal to 1 become constants, multiples of 16 and aligned tensors divisible by 16, as Triton's JIT
    specialises a launch; do_not_specialize parameters keep their plain type."""
    def param(name: str, constexpr: bool = False, plain: bool = False) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name, is_constexpr=constexpr, do_not_specialize=plain,
                                     do_not_specialize_on_alignment=plain)

    params = [param("X"), param("Y"), param("stride"), param("one"), param("odd"), param("scale"),
              param("p", plain=True), param("BLOCK", constexpr=True)]
    fn = types.SimpleNamespace(__name__="k", arg_names=[p.name for p in params], params=params)
    job = {"launch_args": [["tensor", "bf16", True], ["tensor", "fp32", False], ["int", 4096], ["int", 1], ["int", 7],
                           ["float", 0.5], ["int", 32]],
           "launch_kwargs": {"BLOCK": ["int", 64]}}
    signature, consts, attrs = _launch_specialization(fn, job)
    assert signature == {"X": "*bf16", "Y": "*fp32", "stride": "i32", "one": "constexpr", "odd": "i32",
                         "scale": "fp32", "p": "i32", "BLOCK": "constexpr"}
    assert consts == {"one": 1, "BLOCK": 64}
    assert set(attrs) == {(0,), (2,)}
