"""bench/hlo_bytes.py: the bytes each kernel of a compiled program moves, read from HLO text.

A hand-written module in the form the TPU compiler prints (layouts with tiles and memory spaces,
an asynchronous prefetch, a ConcatBitcast, a loop, a Mosaic kernel whose backend config spans
lines, the call-stack tables) with byte counts worked out by hand. Nothing is compiled.
"""

import pytest

from bench import hlo_bytes
from focusclip_jax import aot

HLO = """\
HloModule jit_train_step, is_scheduled=true

FileNames
1 "/repo/focusclip_jax/train.py"
2 "/repo/focusclip_jax/models/layers.py"
3 "/repo/focusclip_jax/models/focusclip.py"

FunctionNames
1 "train_step"
2 "FocusCLIP.encode_text"
3 "_attention_with_dropout"
4 "apply_dropout"

FileLocations
1 {file_name_id=1 function_name_id=1 line=226 end_line=226 column=1 end_column=1}
2 {file_name_id=3 function_name_id=2 line=159 end_line=159 column=1 end_column=1}
3 {file_name_id=2 function_name_id=3 line=187 end_line=187 column=1 end_column=1}
4 {file_name_id=2 function_name_id=4 line=166 end_line=166 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}
4 {file_location_id=4 parent_frame_id=4}

%fused_computation (param_0: bf16[2,4,8,8]) -> f32[2,4,8,8] {
  %param_0 = bf16[2,4,8,8]{3,2,1,0} parameter(0)
  ROOT %convert.9 = f32[2,4,8,8]{3,2,1,0} convert(%param_0)
}

%body (state: (s32[], f32[16])) -> (s32[], f32[16]) {
  %state = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[16]{0} get-tuple-element(%state), index=1
  %add.5 = f32[16]{0} add(%x, %x), metadata={op_name="jit(train_step)/add" stack_frame_id=1}
  ROOT %next = (s32[], f32[16]{0}) tuple(%i, %add.5)
}

%condition (state.1: (s32[], f32[16])) -> pred[] {
  %state.1 = (s32[], f32[16]{0}) parameter(0)
  %n = s32[] get-tuple-element(%state.1), index=0
  %limit = s32[] constant(3)
  ROOT %less = pred[] compare(%n, %limit), direction=LT
}

ENTRY %main.7_spmd (p0: bf16[2,4,8,8], p1: f32[16], p2: f32[4,32]) -> (f32[2,4,8,8], f32[16]) {
  %p0 = bf16[2,4,8,8]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %p1 = f32[16]{0:T(256)} parameter(1)
  %p2 = f32[4,32]{1,0} parameter(2)
  %fusion.1 = f32[2,4,8,8]{3,2,1,0:T(8,128)} fusion(%p0), kind=kLoop, calls=%fused_computation, \
metadata={op_name="jit(train_step)/transpose(jvp(jvp()))/checkpoint/rematted_computation/sub" \
stack_frame_id=4}
  %copy-start.1 = (f32[16]{0:T(256)S(1)}, f32[16]{0:T(256)}, u32[]{:S(2)}) copy-start(%p1)
  %copy-done.1 = f32[16]{0:T(256)S(1)} copy-done(%copy-start.1)
  %multiply.2 = f32[16]{0} multiply(%copy-done.1, %copy-done.1), \
metadata={op_name="jit(train_step)/mul" stack_frame_id=1}
  %slice-start.3 = ((f32[4,32]{1,0}), f32[2,32]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%p2), \
slice={[0:2], [0:32]}
  %slice-done.3 = f32[2,32]{1,0:S(1)} slice-done(%slice-start.3)
  %custom-call.4 = f32[2,32]{1,0:S(1)} custom-call(%slice-done.3), \
custom_call_target="ConcatBitcast"
  %bitcast.5 = f32[64]{0:S(1)} bitcast(%custom-call.4)
  %kernel.6 = (bf16[2,4,8,8]{3,2,1,0}, s8[64]{0}) custom-call(%p0, %bitcast.5), \
custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "x",
"xprof_metadata":"{\\"block_q\\": 128}"
}}, metadata={op_name="jit(train_step)/pallas_call" stack_frame_id=2}
  %init = (s32[], f32[16]{0}) tuple(%p0, %multiply.2)
  %loop = (s32[], f32[16]{0}) while(%init), condition=%condition, body=%body
  %out = f32[16]{0} get-tuple-element(%loop), index=1
  ROOT %tuple.7 = (f32[2,4,8,8]{3,2,1,0}, f32[16]{0}) tuple(%fusion.1, %out)
}
""".replace("\\\n", "")

# (HBM, on-chip) bytes of each kernel, by hand.
EXPECTED = {
    "fusion.1": (2 * 4 * 8 * 8 * 2 + 2 * 4 * 8 * 8 * 4, 0),  # reads bf16, writes f32
    "copy-start.1": (16 * 4, 16 * 4 + 4),  # reads p1, writes the VMEM copy and its u32 context
    "multiply.2": (16 * 4, 2 * 16 * 4),  # reads the VMEM copy twice, writes to HBM
    "slice-start.3": (2 * 32 * 4, 2 * 32 * 4 + 4),  # reads only its slice
    "kernel.6": (2 * 4 * 8 * 8 * 2 + 2 * 4 * 8 * 8 * 2 + 64, 64 * 4),  # Mosaic: one kernel
    "add.5": (3 * 16 * 4, 0),  # the loop body's kernel, counted once
    "less": (4 + 4 + 1, 0),  # the loop condition's compare
}


def test_shape_bytes_of_arrays_tuples_and_memory_spaces() -> None:
    assert hlo_bytes.shape_bytes("bf16[256,12,512,512]{3,2,1,0:T(8,128)(2,1)}") == (
        256 * 12 * 512 * 512 * 2,
        0,
    )
    assert hlo_bytes.shape_bytes("(f32[3]{0}, pred[5]{0:S(1)}, s4[4], f32[])") == (12 + 2 + 4, 5)
    assert hlo_bytes.shape_bytes("f8e4m3fn[10]") == (10, 0)
    with pytest.raises(ValueError, match="unknown HLO element type"):
        aot.dtype_bytes("mystery")


def test_each_kernel_is_charged_its_operands_and_output() -> None:
    found = {k.name: k for k in hlo_bytes.kernels(HLO)}
    assert {name: (k.hbm_bytes, k.on_chip_bytes) for name, k in found.items()} == EXPECTED
    assert found["kernel.6"].opcode == "custom-call:tpu_custom_call"
    assert found["fusion.1"].opcode == "fusion:kLoop" and found["fusion.1"].shape == "f32[2,4,8,8]"
    # The prefetch has no metadata of its own: it takes its consumer's (the multiply).
    assert found["copy-start.1"].scheduled and found["copy-start.1"].stack_frame == 1
    assert found["slice-start.3"].stack_frame == 2  # through slice-done, ConcatBitcast, bitcast


def test_call_stacks_and_categories() -> None:
    stacks = hlo_bytes.stack_frames(HLO)
    assert [f.function for f in stacks[4]] == [
        "apply_dropout",
        "_attention_with_dropout",
        "FocusCLIP.encode_text",
        "train_step",
    ]
    found = {k.name: k for k in hlo_bytes.kernels(HLO)}
    category = lambda name: hlo_bytes.category(found[name], stacks[found[name].stack_frame])
    assert category("fusion.1") == "recompute | text tower | attention dropout"
    assert category("multiply.2") == "update | optimizer | update"
    assert category("copy-start.1") == "scheduler copy | optimizer | update"
    assert category("kernel.6") == "fwd | text tower | FocusCLIP.encode_text"


def test_parent_frames_are_printed_one_past_their_id() -> None:
    """XLA prints `parent_frame_id` as the parent's id plus one (1: a frame without a caller,
    as frame 1 above; frame 4's caller is frame 3)."""
    root = HLO.replace(
        "\n\n%fused_computation", "\n5 {file_location_id=4 parent_frame_id=1}\n\n%fused_computation"
    )
    assert [f.function for f in hlo_bytes.stack_frames(root)[5]] == ["apply_dropout"]
    assert hlo_bytes.stack_frames(root)[4][1].line == 187


def test_summary_groups_identical_kernels_and_adds_up() -> None:
    summary = hlo_bytes.summarise(HLO, top=3)
    total = sum(h + c for h, c in EXPECTED.values())
    assert summary["bytes"] == total and summary["kernels"] == len(EXPECTED)
    assert (
        summary["top"][0]["op_name"] == "transpose(jvp(jvp()))/checkpoint/rematted_computation/sub"
    )
    assert (
        sum(row["bytes"] for row in summary["categories"].values())
        + summary["other_categories"]["bytes"]
        == total
    )


def test_estimated_cycles_are_read_summed_and_ordered() -> None:
    """The compiler's per-kernel `estimated_cycles` (in a fusion's backend config) are read, 0
    without one, summed per group and category, and `order="cycles"` lists by them: the
    fusion that moves the least bytes comes first when it has the most cycles."""
    config = ', backend_config={{"window_config":{{"estimated_cycles":"{}"}}}}'
    hlo = HLO.replace(
        "kind=kLoop, calls=%fused_computation,",
        "kind=kLoop, calls=%fused_computation" + config.format(1000) + ",",
    ).replace(
        "%multiply.2 = f32[16]{0} multiply(%copy-done.1, %copy-done.1),",
        "%multiply.2 = f32[16]{0} multiply(%copy-done.1, %copy-done.1)" + config.format(3000) + ",",
    )
    cycles = {k.name: k.cycles for k in hlo_bytes.kernels(hlo)}
    assert cycles["fusion.1"] == 1000 and cycles["multiply.2"] == 3000
    assert cycles["kernel.6"] == 0  # Mosaic: none
    by_cycles = hlo_bytes.summarise(hlo, top=2, order="cycles")
    assert by_cycles["cycles"] == 4000
    assert [row["first"] for row in by_cycles["top"]] == ["multiply.2", "fusion.1"]
    assert hlo_bytes.summarise(hlo, top=1)["top"][0]["first"] != "multiply.2"  # by bytes
    report = hlo_bytes.format_summary(by_cycles, aot.Cost(of="x"), "header")
    assert "the per-kernel cycle estimates sum to 4,000 cycles" in report
    assert "  75.0 " in report  # multiply.2's share of the cycles
