"""`attnc show`: a variant's IR, its tile classes and its generated Triton source."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import torch

from attnc.arguments import MAX_LENGTH
from attnc.dsl.text import ParamDecl, TensorDecl
from attnc.ir.node import Node
from attnc.ir.ops import Op
from attnc.ir.printer import format_program
from attnc.runtime import sparsity

from .errors import CliError
from .stand_ins import Extent
from .target import Target, how_to_pass, load_target, missing_values


def run(args: argparse.Namespace) -> int:
    if min(args.seq, args.kv_seq or args.seq, args.block) < 1:
        raise CliError("--seq, --kv-seq and --block must be positive")
    if max(args.seq, args.kv_seq or args.seq, args.block) > MAX_LENGTH:
        raise CliError(f"--seq, --kv-seq and --block must be at most {MAX_LENGTH}: positions are int32")
    target = load_target(args, stand_ins=Extent(args.seq, args.kv_seq or args.seq))
    for note in target.notes:
        print(note)
    default = not (args.ir or args.tiles or args.source or args.backward)
    sections: list[tuple[str, str]] = []
    if args.ir or default:
        sections += ir_sections(target)
    if args.tiles or default:
        sections.append(tile_section(target, args.seq, args.kv_seq or args.seq, args.block, required=args.tiles))
    if args.source:
        sections.append(("triton source: forward", target.attn.source.source))
    if args.backward:
        sections.append(("triton source: backward (dK/dV, dQ)", target.attn.backward_source.source))
    print("\n\n".join(f"== {title} ==\n{body.rstrip()}" for title, body in sections))
    if default:
        print(f"\nGenerated Triton source: attnc show {shlex.quote(args.variant)} --source "
              "(--backward for the backward kernels)")
    return 0


# -- IR ----------------------------------------------------------------------------------------------------


def ir_sections(target: Target) -> list[tuple[str, str]]:
    return [(f"variant: {target.label}", slot_lines(target)),
            ("IR as traced", format_program(target.attn.traced.program)),
            ("IR optimised", format_program(target.attn.program))]


def slot_lines(target: Target) -> str:
    """What each slot of the IR stands for, with its value where one is bound."""
    lines = _declared_slots(target) if target.text is not None else _captured_slots(target)
    return "\n".join(lines) or "no tensors or parameters"


def _declared_slots(target: Target) -> list[str]:
    assert target.text is not None
    declared = target.text.declarations
    lines = [f"t{i} = {declared[n].describe()}" for i, n in enumerate(target.text.tensor_slots)]
    for i, name in enumerate(target.text.param_slots):
        decl = declared[name]
        assert isinstance(decl, ParamDecl)
        value = target.values.get(name, decl.default)
        lines.append(f"p{i} = {decl.describe()}" + ("" if value is None else f" = {value!r}"))
    return lines


def _captured_slots(target: Target) -> list[str]:
    bindings = target.bindings()
    lines = [f"t{i} = captured tensor {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
             for i, t in enumerate(bindings.tensors)]
    specs = target.attn.traced.program.params
    lines += [f"p{i} = {spec.name} = {value!r}" for i, (spec, value) in enumerate(zip(specs, bindings.params,
                                                                                      strict=True))]
    return lines


# -- tiles -------------------------------------------------------------------------------------------------


def mask_kind(mask: Node | None) -> str:
    if mask is None:
        return "no mask: every tile is full"
    if not sparsity.analysable(mask):
        return ("pair-by-pair: a tensor read mixes q and kv in one index, so the block map is built by evaluating "
                "pairs (tile_stats counts every tile as partial)")
    if sparsity.reads_data(mask):
        return ("data-dependent: the mask reads tensors at q/kv-dependent positions; its block map comes from "
                "per-tile value ranges in O(length) and is reused until a tensor changes")
    return "analytic: the kernel finds each query tile's key range and tile classes in closed form (no block map)"


def tile_section(target: Target, seq: int, kv_seq: int, block: int, *, required: bool) -> tuple[str, str]:
    title = f"tiles: Q_LEN={seq}, KV_LEN={kv_seq}, {block} x {block}, b=0, h=0"
    kind = mask_kind(target.attn.program.mask)
    values = tile_values(target, required_for="the tile summary" if required else None)
    if values is None:
        needed = " ".join(how_to_pass(d) for d in mask_reads(target))
        return title, f"{kind}\ncounts need the values the mask reads: pass {needed}"
    stats = target.attn.tile_stats(1, 1, seq, kv_seq, BLOCK_M=block, BLOCK_N=block, **values)
    total = sum(stats.values())
    counts = f"empty {stats['empty']}  partial {stats['partial']}  full {stats['full']}  of {total} tiles"
    return title, f"{kind}\n{counts} ({stats['empty'] / max(total, 1):.0%} skipped)"


def mask_reads(target: Target) -> list[TensorDecl | ParamDecl]:
    """The text variant's declarations that the mask reads and that have no value."""
    assert target.text is not None
    mask = target.text.program.mask
    nodes = [] if mask is None else list(mask.walk())
    names = [target.text.tensor_slots[n.arg] for n in nodes if n.op is Op.LOAD]
    names += [target.text.param_slots[n.arg] for n in nodes if n.op is Op.PARAM]
    return [d for d in target.missing() if d.name in names]


def tile_values(target: Target, *, required_for: str | None) -> dict[str, Any] | None:
    """A text variant's values for its mask's tiles: what the mask reads must be given (if it is not: None,
    or an error naming what `required_for` needs); what only the score reads gets a stand-in, since the
    tile analysis never evaluates the score."""
    if target.text is None:
        return {}
    needed = mask_reads(target)
    if needed:
        if required_for is not None:
            raise missing_values(target.label, required_for, needed)
        return None
    return {**target.values, **{d.name: _stand_in(d) for d in target.missing()}}


def _stand_in(decl: TensorDecl | ParamDecl) -> Any:
    if isinstance(decl, ParamDecl):
        return decl.type(1)
    return torch.zeros([d if isinstance(d, int) else 1 for d in decl.dims], dtype=decl.dtype)
