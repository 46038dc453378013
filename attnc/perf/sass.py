"""Reading SASS (NVIDIA's machine code, as `cuobjdump -sass` prints it): instructions, loops, and what
kind of work each instruction is.

    parse(text)            -> functions, each a tuple of Instructions in address order
    find_loops(function)   -> Loops: natural loops, from branches back to a block that dominates them
    census(instructions)   -> instruction counts per category (CATEGORIES), which partition the stream
    pipelining(loop)       -> how a loop gets its global data: copies in flight across iterations, or not

Everything here is static: a count is of instructions in the code, not of instructions executed. A
predicated-off instruction still takes an issue slot, so it counts; a branch inside a loop body makes some
of its instructions conditional, which is why a loop also reports its shortest and longest path.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence

# `        /*2f70*/                   @!P0 HGMMA.64x16x16.F32.BF16 R56, gdesc[UR8], RZ, !UPT ;   /* 0x00... */`
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
                          r"\s*([^;]*);")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_BRANCH_TARGET = re.compile(r"0x([0-9a-fA-F]+)")
_BRANCHES = frozenset({"BRA", "BRX", "JMP", "JMX"})
_PREDICATE_OPERAND = re.compile(r"!?U?P[T0-9]+\s*,")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    predicate: str  # "" when unconditional, else e.g. "@!P0"
    opcode: str  # with its modifiers, e.g. "HGMMA.64x16x16.F32.BF16"
    operands: str

    @property
    def mnemonic(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def conditional(self) -> bool:
        return self.predicate not in ("", "@PT")

    def transfers_always(self) -> bool:
        """Whether control never falls through to the next instruction: an unconditional branch or exit (a
        branch may also take its condition as an operand, `BRA.U !UP0, 0x...`, or diverge, `BRA.DIV`)."""
        if self.mnemonic not in (*_BRANCHES, "EXIT", "RET") or self.conditional:
            return False
        return "DIV" not in self.modifiers and not _PREDICATE_OPERAND.match(self.operands)

    def branch_target(self) -> int | None:
        """The address a direct branch jumps to (None for anything else, or an indirect branch)."""
        if self.mnemonic not in _BRANCHES:
            return None
        match = _BRANCH_TARGET.search(self.operands)
        return int(match[1], 16) if match else None

    def __str__(self) -> str:
        text = f"{self.predicate} {self.opcode} {self.operands}".strip()
        return f"/*{self.address:04x}*/ {text}"


@dataclasses.dataclass(frozen=True)
class Function:
    name: str
    instructions: tuple[Instruction, ...]


def parse(text: str) -> list[Function]:
    """The functions of `cuobjdump -sass` output, in order. Lines other than instructions (headers, the
    second half of each encoding) are skipped; text before any `Function :` header belongs to ""."""
    functions: list[Function] = []
    name, body = "", []
    for line in text.splitlines():
        header = _FUNCTION.match(line)
        if header:
            if body:
                functions.append(Function(name, tuple(body)))
            name, body = header[1], []
            continue
        match = _INSTRUCTION.match(line)
        if match:
            predicate = (match[2] or "").strip()
            body.append(Instruction(int(match[1], 16), predicate, match[3], match[4].strip()))
    if body:
        functions.append(Function(name, tuple(body)))
    return functions


# -- loops -------------------------------------------------------------------------------------------------
#
# Loops are the natural loops of the control-flow graph: a back edge is a branch to a block that dominates
# it (every path from the entry to the branch passes through the target), and its loop is the target plus
# every block that reaches the branch without passing through the target. Plain "branch to a lower address"
# is not enough: ptxas moves slow paths (an mbarrier wait that has to retry) out of line, past the end of
# the function, and they jump back into the middle of the loop they belong to.


@dataclasses.dataclass(frozen=True)
class Loop:
    """A natural loop: its header, its latch (the last back branch to the header) and its body, the
    instructions of all its blocks in address order (out-of-line blocks included)."""

    start: int  # the header's address
    end: int  # the address of the back branch
    body: tuple[Instruction, ...]
    innermost: bool  # no other loop lies inside it
    shortest_path: int  # instructions on the cheapest way from the header round to the back branch
    longest_path: int  # ... the dearest (inner loops' back edges not taken)

    @property
    def size(self) -> int:
        """The static count: every instruction of the body, whichever branch an iteration takes."""
        return len(self.body)

    @property
    def out_of_line(self) -> int:
        """Body instructions outside start .. end (slow paths the compiler placed elsewhere)."""
        return sum(1 for i in self.body if not self.start <= i.address <= self.end)

    @property
    def tensor_ops(self) -> int:
        return sum(1 for i in self.body if category(i) == "tensor")

    def contains(self, other: Loop) -> bool:
        """Whether `other` is a different loop nested in this one."""
        mine = {i.address for i in self.body}
        return other is not self and other.start != self.start and all(i.address in mine for i in other.body)


@dataclasses.dataclass(frozen=True)
class _Graph:
    """Basic blocks of a function: instruction index ranges, successors and predecessors."""

    bounds: list[tuple[int, int]]  # [first, last] instruction index per block
    successors: list[list[int]]
    predecessors: list[list[int]]

    def size(self, block: int) -> int:
        first, last = self.bounds[block]
        return last - first + 1


def _graph(instructions: Sequence[Instruction]) -> _Graph:
    index = {instruction.address: n for n, instruction in enumerate(instructions)}
    leaders = {0}
    for n, instruction in enumerate(instructions):
        target = instruction.branch_target()
        if target in index:
            leaders.add(index[target])
        if instruction.mnemonic in (*_BRANCHES, "EXIT", "RET") and n + 1 < len(instructions):
            leaders.add(n + 1)
    starts = sorted(leaders)
    bounds = [(first, (starts[k + 1] if k + 1 < len(starts) else len(instructions)) - 1)
              for k, first in enumerate(starts)]
    block_of = {first: k for k, (first, _) in enumerate(bounds)}
    successors: list[list[int]] = [[] for _ in bounds]
    for k, (_, last) in enumerate(bounds):
        instruction = instructions[last]
        target = instruction.branch_target()
        if target in index:
            successors[k].append(block_of[index[target]])
        if not instruction.transfers_always() and k + 1 < len(bounds):
            successors[k].append(k + 1)
    predecessors: list[list[int]] = [[] for _ in bounds]
    for k, targets in enumerate(successors):
        for t in targets:
            predecessors[t].append(k)
    return _Graph(bounds, successors, predecessors)


def _dominators(graph: _Graph) -> list[int]:
    """Per block, the set of blocks dominating it as a bit mask (0 for blocks unreachable from the entry)."""
    count = len(graph.bounds)
    reachable, stack = {0}, [0]
    while stack:
        for t in graph.successors[stack.pop()]:
            if t not in reachable:
                reachable.add(t)
                stack.append(t)
    everything = (1 << count) - 1
    dom = [everything if k in reachable else 0 for k in range(count)]
    dom[0] = 1
    changed = True
    while changed:
        changed = False
        for k in sorted(reachable - {0}):
            meet = everything
            for p in graph.predecessors[k]:
                if p in reachable:
                    meet &= dom[p]
            new = meet | (1 << k)
            if new != dom[k]:
                dom[k], changed = new, True
    return dom


def find_loops(function: Function) -> list[Loop]:
    """Every natural loop of `function`, by header address (outer before inner at one address). A branch
    to itself (the `BRA` that parks a thread after EXIT, never reached) is not a loop."""
    instructions = function.instructions
    if not instructions:
        return []
    graph = _graph(instructions)
    dom = _dominators(graph)
    latches: dict[int, list[int]] = {}
    for k, targets in enumerate(graph.successors):
        for header in targets:
            if dom[k] >> header & 1:
                latches.setdefault(header, []).append(k)
    blocks = {header: _natural_loop(graph, header, tails) for header, tails in latches.items()}
    loops = []
    for header in sorted(latches, key=lambda h: graph.bounds[h][0]):
        members = blocks[header]
        inner = any(other != header and blocks[other] < members for other in blocks)
        body = tuple(instructions[n] for k in sorted(members) for n in range(graph.bounds[k][0],
                                                                             graph.bounds[k][1] + 1))
        end = max(instructions[graph.bounds[t][1]].address for t in latches[header])
        shortest, longest = _path_lengths(graph, dom, header, members, latches[header])
        loops.append(Loop(instructions[graph.bounds[header][0]].address, end, body, not inner, shortest, longest))
    return loops


def _natural_loop(graph: _Graph, header: int, tails: Sequence[int]) -> frozenset[int]:
    members, stack = {header}, [t for t in tails if t != header]
    members.update(stack)
    while stack:
        for p in graph.predecessors[stack.pop()]:
            if p not in members:
                members.add(p)
                stack.append(p)
    return frozenset(members)


def _path_lengths(graph: _Graph, dom: list[int], header: int, members: frozenset[int],
                  tails: Sequence[int]) -> tuple[int, int]:
    """(shortest, longest) instruction count of a path from the header to one of its back branches inside
    the loop, not taking any back edge (its own or an inner loop's): those edges removed, the loop's blocks
    form a DAG, walked in topological order."""
    edges = {k: [t for t in graph.successors[k] if t in members and not dom[k] >> t & 1] for k in members}
    indegree = dict.fromkeys(members, 0)
    for targets in edges.values():
        for t in targets:
            indegree[t] += 1
    shortest = {header: graph.size(header)}
    longest = dict(shortest)
    ready = [k for k in members if indegree[k] == 0]
    while ready:
        k = ready.pop()
        for t in edges[k]:
            if k in shortest:
                shortest[t] = min(shortest.get(t, 1 << 30), shortest[k] + graph.size(t))
                longest[t] = max(longest.get(t, 0), longest[k] + graph.size(t))
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    ends = [t for t in tails if t in shortest]
    return min(shortest[t] for t in ends), max(longest[t] for t in ends)


# -- what each instruction does ----------------------------------------------------------------------------

# Each instruction falls in exactly one category; `census` counts them, so the counts add up to the body.
CATEGORIES = ("tensor", "mufu", "fp32", "fp16x2", "convert", "int", "int64", "uniform", "move", "global",
              "shared", "tma", "local", "const", "warp", "sync", "control", "other")

_TENSOR = {"HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "BGMMA", "DMMA", "UTCHMMA", "UTCQMMA", "UTCIMMA"}
_FP32 = {"FADD", "FMUL", "FFMA", "FMNMX", "FMNMX3", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD", "FADD32I",
         "FMUL32I", "FFMA32I", "FADD2", "FMUL2", "FFMA2"}
_FP16X2 = {"HADD2", "HMUL2", "HFMA2", "HMNMX2", "HSETP2", "HSET2", "HADD2_32I", "HMUL2_32I", "HFMA2_32I"}
_CONVERT = {"F2F", "F2FP", "F2I", "I2F", "I2FP", "F2IP", "I2IP", "FRND"}
_INT = {"IADD3", "IADD", "IADD32I", "IMAD", "IMAD32I", "IMUL", "IMUL32I", "LOP3", "LOP", "LOP32I", "SHF", "SHL",
        "SHR", "LEA", "ISETP", "SEL", "IMNMX", "IABS", "PRMT", "SGXT", "BMSK", "POPC", "FLO", "BREV", "IDP",
        "VIADD", "VIMNMX", "VIMNMX3", "VIADDMNMX", "ISCADD", "PLOP3", "ICMP", "BFE", "BFI"}
# modifiers that make an integer instruction one half (or all) of a 64-bit operation: IMAD.WIDE's 64-bit
# result, the .X carry-in of the high word (IADD3.X, LEA.HI.X, IMAD.X), ISETP's .EX (the high word's compare
# chained to the low word's), 64-bit funnel shifts
_INT64_MODIFIERS = {"WIDE", "X", "EX", "U64", "S64"}
_MOVE = {"MOV", "MOV32I", "S2R", "S2UR", "CS2R", "R2UR", "P2R", "R2P", "MOVM"}
_GLOBAL = {"LDG", "STG", "LDGSTS", "LD", "ST", "ATOM", "ATOMG", "RED", "CCTL", "LDGMC"}
_SHARED = {"LDS", "STS", "LDSM", "STSM", "ATOMS"}
_TMA = {"UTMALDG", "UTMASTG", "UBLKCP", "UTMAPF", "UTMAREDG", "UBLKRED", "UTMACCTL", "UTMACMDFLUSH", "UBLKPF"}
_LOCAL = {"LDL", "STL"}
_CONST = {"LDC"}
_WARP = {"SHFL", "VOTE", "VOTEU", "MATCH", "REDUX", "ELECT"}
_SYNC = {"BAR", "SYNCS", "WARPGROUP", "WARPSYNC", "MEMBAR", "FENCE", "ERRBAR", "DEPBAR", "LDGDEPBAR", "ARRIVES",
         "BSSY", "BSYNC", "NANOSLEEP", "YIELD", "CGAERRBAR", "ACQBULK", "UCGABAR_ARV", "UCGABAR_WAIT"}
_CONTROL = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BPT", "KILL", "BREAK", "NOP", "WARPGROUP_ARRIVE"}


def category(instruction: Instruction) -> str:
    """Which of CATEGORIES `instruction` belongs to (by its mnemonic, and modifiers for 64-bit integer
    forms and moves spelled as IMAD.MOV)."""
    m = instruction.mnemonic
    mods = set(instruction.modifiers)
    for name, members in (("tensor", _TENSOR), ("tma", _TMA)):
        if m in members:
            return name
    if m == "MUFU":
        return "mufu"
    if m in _FP32:
        return "fp32"
    if m in _FP16X2:
        return "fp16x2"
    if m in _CONVERT:
        return "convert"
    if m == "IMAD" and "MOV" in mods:  # the compiler's move idiom on the FMA pipe: IMAD.MOV.U32 Rd, RZ, RZ, Rs
        return "move"
    if m in _INT:
        return "int64" if mods & _INT64_MODIFIERS else "int"
    if m.startswith("U") and m not in _SYNC:  # the uniform datapath: UIADD3, UMOV, ULDC, ...
        return "uniform"
    for name, members in (("move", _MOVE), ("global", _GLOBAL), ("shared", _SHARED), ("local", _LOCAL),
                          ("const", _CONST), ("warp", _WARP), ("sync", _SYNC), ("control", _CONTROL)):
        if m in members:
            return name
    return "other"


def census(instructions: Iterable[Instruction]) -> dict[str, int]:
    """Instructions per category, every category present (zeros included), in CATEGORIES order."""
    counts = Counter(category(i) for i in instructions)
    return {name: counts.get(name, 0) for name in CATEGORIES}


def opcode_counts(instructions: Iterable[Instruction]) -> dict[str, int]:
    """Instructions per mnemonic, most frequent first."""
    return dict(Counter(i.mnemonic for i in instructions).most_common())


# -- tensor cores ------------------------------------------------------------------------------------------

_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
# mma.sync shapes by modifier (m, n, k): HMMA.16816 is m16n8k16, HMMA.1688 m16n8k8
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4)}


def matmul_kind(instructions: Iterable[Instruction]) -> str:
    """"wgmma" (Hopper's warpgroup MMA, SASS HGMMA), "mma.sync" (HMMA), both, or "none"."""
    mnemonics = {i.mnemonic for i in instructions}
    kinds = [name for name, op in (("wgmma", "HGMMA"), ("mma.sync", "HMMA")) if op in mnemonics]
    return " + ".join(kinds) or "none"


def tensor_macs(instructions: Iterable[Instruction], num_warps: int) -> int:
    """Multiply-adds the program's warps issue to the tensor cores: an HGMMA.MxNxK is one M x N x K product
    per warpgroup (4 warps issue it together), an HMMA one m x n x k product per warp. 0 for other shapes."""
    total = 0
    for instruction in instructions:
        if instruction.mnemonic == "HGMMA":
            shape = next((s for s in map(_SHAPE.match, instruction.modifiers) if s), None)
            if shape:
                total += int(shape[1]) * int(shape[2]) * int(shape[3]) * num_warps // 4
        elif instruction.mnemonic == "HMMA":
            dims = next((_HMMA_SHAPES[m] for m in instruction.modifiers if m in _HMMA_SHAPES), None)
            if dims:
                total += dims[0] * dims[1] * dims[2] * num_warps
    return total


# -- pipelining --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pipelining:
    """How a loop gets its global data, and the verdict of the heuristic (see `pipelining`)."""

    pipelined: bool
    how: str
    async_copies: int  # LDGSTS (cp.async) + UTMALDG / UBLKCP (TMA) in the body
    copy_waits: int  # DEPBAR (waits on cp.async groups) + SYNCS.PHASECHK (mbarrier waits) in the body
    global_loads: int  # plain LDG
    shared_stores: int  # STS

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


_CP_ASYNC, _TMA_COPIES = {"LDGSTS"}, {"UTMALDG", "UBLKCP"}


def _is_copy_wait(instruction: Instruction) -> bool:
    # DEPBAR.LE SB0, n waits until at most n cp.async groups are pending (LDGDEPBAR only closes a group);
    # SYNCS.PHASECHK... waits for an mbarrier phase, which TMA copies complete
    if instruction.mnemonic == "DEPBAR":
        return True
    return instruction.mnemonic == "SYNCS" and any(m.startswith("PHASECHK") for m in instruction.modifiers)


def pipelining(loop: Loop) -> Pipelining:
    """Heuristic: a loop is software-pipelined when its body issues asynchronous copies (cp.async = LDGSTS,
    TMA = UTMALDG / UBLKCP) and its last copy comes after its last wait on copies (DEPBAR for cp.async
    groups, SYNCS.PHASECHK for mbarriers): those copies are still in flight when the iteration ends, for a
    later iteration to consume, which is how Triton's pipeliner overlaps loads with compute. A body that
    waits for every copy it issues before the iteration ends, or that loads with plain LDG and stores the
    registers to shared memory (STS), is not pipelined. Order is taken along the loop's in-line part
    (start .. end): out-of-line retry paths of a wait come after everything. Not checked: that the copies
    feed a later iteration (no data flow is followed), nor how many stages are in flight."""
    inline = [i for i in loop.body if loop.start <= i.address <= loop.end]
    copies = [n for n, i in enumerate(inline) if i.mnemonic in _CP_ASYNC | _TMA_COPIES]
    waits = [n for n, i in enumerate(inline) if _is_copy_wait(i)]
    mnemonics = Counter(i.mnemonic for i in loop.body)
    loads, stores = mnemonics["LDG"], mnemonics["STS"]
    kinds = [name for name, ops in (("cp.async", _CP_ASYNC), ("TMA", _TMA_COPIES)) if any(mnemonics[o] for o in ops)]
    if copies and (not waits or copies[-1] > waits[-1]):
        how, pipelined = " + ".join(kinds) + " copies in flight across iterations", True
    elif copies:
        how, pipelined = " + ".join(kinds) + " copies waited for in the same iteration", False
    elif loads and stores:
        how, pipelined = "register-staged (LDG then STS)", False
    elif loads:
        how, pipelined = "direct global loads (LDG)", False
    else:
        how, pipelined = "no global loads", False
    return Pipelining(pipelined, how, len(copies), len(waits), loads, stores)


def uses_tma(instructions: Iterable[Instruction]) -> bool:
    return any(category(i) == "tma" for i in instructions)
