"""attnc inside torch.compile and torch.export: the kernels as torch.library custom ops.

Dynamo cannot trace attnc's front end (running mods on symbolic values, walking closures), and need not:
a variant is traced once, outside the graph. Under compilation a call does three things, each traceable:

1. `_layout_of` runs at graph-trace time only (`assume_constant_result`): it traces the variant if needed,
   registers it under a number, and returns, as plain constants, where each runtime value of the variant
   lives (a path through the mods' closures, defaults and partials).
2. The values are read along those paths with plain attribute and item accesses (`closure.follow`): Dynamo
   makes captured tensors graph inputs and guards on the closures as it does for any user code, so new
   values of a tensor never recompile; torch operations a mod applies to captured tensors (derived values)
   are replayed in the graph, where AOTAutograd differentiates them. A variant in the text syntax needs no
   paths: its values by name are the call's own arguments (`attend_text`).
3. One custom op, `attnc::attention`, runs the forward kernels; its fake implementation gives the output
   shapes (and checks the arguments while the graph is built); its autograd formula is a second op,
   `attnc::attention_backward`. AOTAutograd sees one op forward and one backward.

A mod defined inside the compiled function that captures a tensor cannot be handed to step 1 (Dynamo
holds such a closure only symbolically): define mods outside the compiled code, as FlexAttention users
usually do (module level, or built in a module's __init__).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnc import arguments
from attnc.arguments import shared_kv_batch
from attnc.dsl.captures import Bindings
from attnc.dsl.closure import follow
from attnc.runtime import launch
from attnc.runtime.block_mask import BlockMask
from attnc.runtime.kernel_options import CallOptions

# Registered variants by number. Strong references: a compiled graph names its variant by number and may
# outlive every other reference to it.
_VARIANTS: dict[int, Any] = {}
_NUMBERS = itertools.count()


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a registered variant's runtime values live: constants, so the graph code reading them is plain."""

    number: int
    params: tuple[tuple[Any, ...], ...]  # the closure path of each parameter slot
    inputs: tuple[tuple[Any, ...] | None, ...]  # of each captured tensor (None: held by the trace itself)
    # values the trace depends on: closure scalars it specialised on, and the constants it read (globals,
    # None / bool / str values), each with its path and value; the graph code compares them, so that
    # Dynamo guards on each and compiles again (tracing the variant again) when one changes
    constants: tuple[tuple[tuple[Any, ...], Any], ...]
    metadata: tuple[tuple[bool, int, tuple[int, ...]], ...]  # (derived, index, shape) of shapes read in a mod
    slots: tuple[tuple[bool, int], ...]  # what each tensor slot reads: (derived, index)
    derived: int  # how many derived values the replay computes


def register(attn: Any) -> int:
    """The number under which the custom ops find `attn`."""
    number = getattr(attn, "_graph_number", None)
    if number is None:
        number = attn._graph_number = next(_NUMBERS)
        _VARIANTS[number] = attn
    return number


def _layout(attn: Any, mask_mod: Any, score_mod: Any) -> tuple:
    attn.bind_mods(mask_mod, score_mod)  # traced again first if the mods changed shape since
    captures = attn.traced.captures
    layout = Layout(
        number=register(attn),
        params=tuple(captures.params),
        inputs=tuple(source.path for source in captures.inputs),
        constants=tuple(captures.frozen) + tuple(
            (path, descriptor[2]) for path, _, descriptor in captures.shape if descriptor[0] == "value"),
        metadata=tuple((read.ref.derived, read.ref.index, tuple(read.metadata[0])) for read in captures.metadata),
        slots=tuple((slot.ref.derived, slot.ref.index) for slot in captures.slots),
        derived=captures.replay.count,
    )
    return dataclasses.astuple(layout)


@torch._dynamo.assume_constant_result
def _layout_of(attn: Any, mask_mod: Any, score_mod: Any) -> tuple:
    return _layout(attn, mask_mod, score_mod)


@torch._dynamo.assume_constant_result
def _layout_of_mods(variant_of: Any, mask_mod: Any, score_mod: Any) -> tuple:
    return _layout(variant_of(mask_mod, score_mod), mask_mod, score_mod)


@torch._dynamo.assume_constant_result
def _options_text(enable_gqa: bool, backend: str, kernel_options: Any, deterministic: bool) -> str:
    return json.dumps({"enable_gqa": enable_gqa, "backend": backend, "kernel_options": kernel_options,
                       "deterministic": deterministic}, sort_keys=True)


# Objects a path builds once per key (the serving paths' wrapped variants), by number: see `made_once`.
_OBJECTS: dict[int, Any] = {}


@torch._dynamo.assume_constant_result
def _object_number(factory: Any, *key: Any) -> int:
    made = factory(*key)
    _OBJECTS.setdefault(id(made), made)  # kept: the graph names it by number
    return id(made)


def made_once(factory: Any, *key: Any) -> Any:
    """`factory(*key)` (a cached factory, such as the serving paths' wrapped variants); under torch.compile it
    runs while the graph is built, not traced, and the graph code receives the object it made."""
    if torch.compiler.is_compiling():
        return _OBJECTS[_object_number(factory, *key)]
    return factory(*key)


def require(condition: Tensor, message: str, found: Any = None) -> None:
    """A check of tensor values: a ValueError now (`message`, then what `found()` says was found), or under
    torch.compile an assertion the graph runs (values are not known while the graph is built)."""
    if torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message if found is None else f"{message}, got {found()}")


def _pinned(number: int, index: int) -> Tensor:
    return _VARIANTS[number].traced.captures.inputs[index].pinned


def _recipes(number: int) -> Sequence[Any]:
    return _VARIANTS[number].traced.captures.replay.recipes


def _values(layout: Layout, mask_mod: Any, score_mod: Any) -> tuple[list[Tensor], Tensor]:
    """The slot tensors and the parameters (as one float64 tensor), read from the mods in traceable code."""
    roots = {"mask": mask_mod, "score": score_mod}
    for path, value in layout.constants:
        if follow(roots[path[0]], path[1:]) != value:  # a guard, never true in the compiled graph
            raise AssertionError(f"attnc: {path} is no longer {value!r}")
    inputs = [_pinned(layout.number, i) if path is None else follow(roots[path[0]], path[1:])
              for i, path in enumerate(layout.inputs)]
    derived: list[Tensor] = [None] * layout.derived  # type: ignore[list-item]
    for recipe in _recipes(layout.number):
        recipe.run(inputs, derived)
    for is_derived, index, shape in layout.metadata:
        tensor = derived[index] if is_derived else inputs[index]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"attnc: a captured tensor the mod reads the shape of had shape {list(shape)} and now "
                             f"has {list(tensor.shape)}")
    tensors = [derived[index] if is_derived else inputs[index] for is_derived, index in layout.slots]
    return tensors, _packed([follow(roots[path[0]], path[1:]) for path in layout.params])


def _packed(params: Sequence[Any]) -> Tensor:
    """The parameters as one float64 tensor, built with tensor arithmetic so that numbers Dynamo made
    symbolic stay graph inputs: AOTAutograd turns a symbolic float into a tensor only where torch operations
    consume it (`torch.tensor([...])` of one would fix its value, compiling again for each new one)."""
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([torch.zeros((), dtype=torch.float64) + p for p in params])


def _block_mask_parts(block_mask: Any) -> tuple[list[Tensor | None], list[int]]:
    if block_mask is None:
        return [], []
    lists = [getattr(block_mask, name, None) for name in BlockMask.TENSOR_FIELDS]
    sizes = block_mask.BLOCK_SIZE if isinstance(block_mask.BLOCK_SIZE, tuple) else (block_mask.BLOCK_SIZE,) * 2
    return lists, [*sizes, *block_mask.seq_lengths]


def attend(attn: Any, mask_mod: Any, score_mod: Any, query: Tensor, key: Tensor, value: Tensor, block_mask: Any,
           options: Any) -> tuple[Tensor, Tensor]:
    """`attn.attend` as graph code: (out, lse) through the custom op."""
    layout = Layout(*_layout_of(attn, mask_mod, score_mod))
    return _call_mods(layout, mask_mod, score_mod, query, key, value, block_mask, options)


def attend_mods(variant_of: Any, mask_mod: Any, score_mod: Any, query: Tensor, key: Tensor, value: Tensor,
                block_mask: Any, options: Any) -> tuple[Tensor, Tensor]:
    """flex_attention as graph code: the variant of these mods (`variant_of(mask_mod, score_mod)`, made once)
    through the custom op."""
    layout = Layout(*_layout_of_mods(variant_of, mask_mod, score_mod))
    return _call_mods(layout, mask_mod, score_mod, query, key, value, block_mask, options)


@torch._dynamo.assume_constant_result
def _number_of(attn: Any) -> int:
    return register(attn)


def attend_text(attn: Any, values: dict[str, Any], query: Tensor, key: Tensor, value: Tensor, block_mask: Any,
                options: Any) -> tuple[Tensor, Tensor]:
    """A text variant's call as graph code: its tensors and parameters, bound by name (`values`: the
    variant's defaults and the call's keywords), are graph inputs of the custom op."""
    attn.text.check(values)  # while the graph is built: names, types, dtypes and ranks
    tensors, params = attn.text.slot_values(values)
    return _call(_number_of(attn), tensors, _packed(params), query, key, value, block_mask, options)


def _call_mods(layout: Layout, mask_mod: Any, score_mod: Any, query: Tensor, key: Tensor, value: Tensor,
               block_mask: Any, options: Any) -> tuple[Tensor, Tensor]:
    tensors, params = _values(layout, mask_mod, score_mod)
    return _call(layout.number, tensors, params, query, key, value, block_mask, options)


def _call(number: int, tensors: list[Tensor], params: Tensor, query: Tensor, key: Tensor, value: Tensor,
          block_mask: Any, options: Any) -> tuple[Tensor, Tensor]:
    key, value = shared_kv_batch(query, key, value)  # a view: AOTAutograd sums its gradient over the batch
    lists, sizes = _block_mask_parts(block_mask)
    text = _options_text(options.enable_gqa, options.backend, options.kernel_options, options.deterministic)
    return torch.ops.attnc.attention(query, key, value, tensors, params, lists, sizes, number, text, options.scale)


# -- the custom ops ---------------------------------------------------------------------------------------


def _bound(number: int, tensors: Sequence[Tensor], params: Tensor) -> tuple[Any, Any]:
    attn = _VARIANTS[number]
    values = []
    for spec, value in zip(attn.traced.program.params, params.tolist(), strict=True):
        values.append(int(value) if spec.dtype.is_int else value)
    return attn, Bindings(tuple(tensors), tuple(values))


def _options(text: str, scale: float | None) -> CallOptions:
    return CallOptions(scale=scale, **json.loads(text))


def _block_mask(lists: Sequence[Tensor | None], sizes: Sequence[int]) -> BlockMask | None:
    if not lists:
        return None
    return BlockMask((sizes[2], sizes[3]), *lists, BLOCK_SIZE=(sizes[0], sizes[1]))


@torch.library.custom_op("attnc::attention", mutates_args=())
def attention_op(query: Tensor, key: Tensor, value: Tensor, tensors: list[Tensor], params: Tensor,
                 block_mask: list[Tensor | None], block_sizes: list[int], variant: int, options: str,
                 scale: float | None) -> tuple[Tensor, Tensor]:
    attn, bindings = _bound(variant, tensors, params)
    out, lse = attn.attend(query, key, value, bindings, _block_mask(block_mask, block_sizes), _options(options, scale))
    return out, lse.clone()  # the kernels' lse is a view of their row statistics; an op returns its own tensor


@attention_op.register_fake
def _attention_fake(query: Tensor, key: Tensor, value: Tensor, tensors: list[Tensor], params: Tensor,
                    block_mask: list[Tensor | None], block_sizes: list[int], variant: int, options: str,
                    scale: float | None) -> tuple[Tensor, Tensor]:
    arguments.check_attention_tensors(query, key, value)
    shapes = launch.check_inputs(query, key, value, enable_gqa=json.loads(options)["enable_gqa"])
    out = launch.empty_in_order_of(query, (shapes.B, shapes.Hq, shapes.Q_LEN, shapes.Dv))
    lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    return out, query.new_empty((shapes.B, shapes.Hq, shapes.Q_LEN), dtype=lse_dtype)


@torch.library.custom_op("attnc::attention_backward", mutates_args=())
def attention_backward_op(query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                          dlse: Tensor | None, tensors: list[Tensor], params: Tensor,
                          block_mask: list[Tensor | None], block_sizes: list[int], wanted: list[bool], variant: int,
                          options: str, scale: float | None) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    attn, bindings = _bound(variant, tensors, params)
    dq, dk, dv, captured = attn.attend_backward(query, key, value, out, lse, dout, dlse, bindings,
                                                _block_mask(block_mask, block_sizes), _options(options, scale),
                                                list(wanted))
    grads = [captured[slot].to(t.dtype) if slot in captured else torch.zeros_like(t)
             for slot, (want, t) in enumerate(zip(wanted, tensors, strict=True)) if want]
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), grads


@attention_backward_op.register_fake
def _attention_backward_fake(query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                             dlse: Tensor | None, tensors: list[Tensor], params: Tensor,
                             block_mask: list[Tensor | None], block_sizes: list[int], wanted: list[bool],
                             variant: int, options: str,
                             scale: float | None) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    grads = [torch.empty_like(t) for want, t in zip(wanted, tensors, strict=True) if want]
    contiguous = torch.contiguous_format
    return (torch.empty_like(query, memory_format=contiguous), torch.empty_like(key, memory_format=contiguous),
            torch.empty_like(value, memory_format=contiguous), grads)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    query, key, value, tensors, params, block_mask, block_sizes, variant, options, scale = inputs
    out, lse = output
    ctx.wanted = [t.requires_grad and t.is_floating_point() for t in tensors]
    ctx.present = [t is not None for t in block_mask]
    ctx.counts = len(tensors)
    ctx.save_for_backward(query, key, value, out, lse, params, *tensors, *(t for t in block_mask if t is not None))
    ctx.constants = (block_sizes, variant, options, scale)


def _backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None) -> tuple:
    query, key, value, out, lse, params, *rest = ctx.saved_tensors
    tensors, stored = rest[:ctx.counts], iter(rest[ctx.counts:])
    block_mask = [next(stored) if present else None for present in ctx.present]
    block_sizes, variant, options, scale = ctx.constants
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, grads = torch.ops.attnc.attention_backward(
        query, key, value, out, lse, dout, dlse, tensors, params, block_mask, block_sizes, ctx.wanted, variant,
        options, scale)
    found = iter(grads)
    captured = [next(found) if want else None for want in ctx.wanted]
    # one entry per input, in the structure torch flattens the inputs to: a list of tensors gets a list, a
    # non-empty list of ints is one leaf (an empty one stays an empty list)
    sizes_grad = None if block_sizes else []
    return dq, dk, dv, captured, None, [None] * len(block_mask), sizes_grad, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
