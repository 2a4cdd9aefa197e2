#!/usr/bin/env python3
"""Convert MediaPipe Holistic's TFLite nets to NCHW ONNX for burn-onnx.

Run once, offline (see README.md, "Re-running the converter"):

    python models/convert.py --wheel-dir /tmp/mp/mediapipe --image ../shared/testdata/images/obama.jpg

For each net this script
  1. parses the .tflite flatbuffer (`tflite` package) and rebuilds the graph op by op as ONNX (opset 16),
     moving every 4-D activation to NCHW;
  2. takes the weights from the TFLite interpreter itself, so float16 (DEQUANTIZE) and sparse (DENSIFY)
     constants come out exactly as TFLite computes them;
  3. runs the TFLite interpreter and onnxruntime on the same real image crop and fails if any output
     differs by more than 1e-3 (max abs);
  4. writes `models/<net>.onnx` and the reference fixture `models/fixtures/<net>/` for the Rust tests.

Why our own converter: tflite2onnx and tf2onnx each fail on one of DENSIFY, float16 DEQUANTIZE or the
channel PAD of these nets, and neither emits exactly the op subset that burn-onnx 0.22 generates code for.

Output is deterministic: tensor and node names come from TFLite tensor indices, there are no timestamps,
and the producer metadata is fixed, so a re-run reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import tflite
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tflite.BuiltinOperator import BuiltinOperator

OPSET = 16
# Pass criterion per output: max |onnx - tflite| <= ABS_TOL + REL_TOL * max |tflite|. Plain 1e-3 absolute is the
# goal, but outputs in pixel units reach hundreds (pose z up to ~380), where float32 rounding alone exceeds it:
# TFLite's own XNNPACK and reference kernels differ by 2.7e-3 on pose_landmark_full's z. The relative term
# (2e-5 of the output's largest magnitude) covers that and nothing more; the converter prints that noise floor.
ABS_TOL = 1e-3
REL_TOL = 2e-5
PRODUCER = "holistream models/convert.py"
PRODUCER_VERSION = "2"
# The batch dimension of the inputs and outputs: the TFLite nets take one image, the ONNX ones any number (a GPU
# runs several sessions' frames as one batch); every Reshape keeps the batch (-1) instead of TFLite's 1.
BATCH = "N"

# NHWC axis -> NCHW axis, for axis attributes of ops on 4-D activations.
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)

# TFLite ActivationFunctionType
ACT_NONE, ACT_RELU, ACT_RELU_N1_TO_1, ACT_RELU6, ACT_TANH = 0, 1, 2, 3, 4
# TFLite Padding
PAD_SAME, PAD_VALID = 0, 1


@dataclass(frozen=True)
class Crop:
    """A square box of the source image (may overhang: the overhang is black), resized to the net input."""

    cx: float
    cy: float
    size: float
    letterbox: bool = False  # whole image, padded to a square (pose detection's input)


@dataclass(frozen=True)
class NetSpec:
    name: str  # file stem, equals holistream_nets::Net::name()
    wheel_path: str  # path inside the mediapipe wheel
    keep_outputs: tuple[str, ...] | None  # None: all outputs
    # Input normalisation the MediaPipe graph uses: x = u8 * scale + offset.
    scale: float
    offset: float
    crop: Crop


ZERO_ONE = (1.0 / 255.0, 0.0)
MINUS_ONE_ONE = (1.0 / 127.5, -1.0)

# Crops of obama.jpg (910x1137) around what each net looks at in the Holistic graph.
NETS = [
    NetSpec("pose_detection", "modules/pose_detection/pose_detection.tflite", None,
            *MINUS_ONE_ONE, Crop(0, 0, 0, letterbox=True)),
    # The segmentation head (Identity_2, 256x256x1) is pruned: Holistic does not use it.
    NetSpec("pose_landmark_full", "modules/pose_landmark/pose_landmark_full.tflite",
            ("Identity", "Identity_1", "Identity_3", "Identity_4"),
            *ZERO_ONE, Crop(500, 600, 1000)),
    NetSpec("face_detection_short_range", "modules/face_detection/face_detection_short_range.tflite", None,
            *MINUS_ONE_ONE, Crop(493, 285, 420)),
    NetSpec("face_landmark", "modules/face_landmark/face_landmark.tflite", None,
            *ZERO_ONE, Crop(493, 285, 350)),
    NetSpec("hand_recrop", "modules/holistic_landmark/hand_recrop.tflite", None,
            *ZERO_ONE, Crop(547, 962, 300)),
    NetSpec("hand_landmark_full", "modules/hand_landmark/hand_landmark_full.tflite", None,
            *ZERO_ONE, Crop(267, 942, 280)),
]

OP_NAMES = {v: k for k, v in BuiltinOperator.__dict__.items() if not k.startswith("_")}


class ConversionError(Exception):
    pass


def fail(msg: str) -> None:
    raise ConversionError(msg)


# ---------------------------------------------------------------------------------------------------------------
# Reading the TFLite model
# ---------------------------------------------------------------------------------------------------------------


def options(op, cls):
    table = op.BuiltinOptions()
    if table is None:
        fail(f"op has no options table, expected {cls.__name__}")
    o = cls()
    o.Init(table.Bytes, table.Pos)
    return o


def tensor_shape(t) -> list[int]:
    return [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []


class TfliteModel:
    """The flatbuffer plus an interpreter run that materialises every constant as float32."""

    def __init__(self, path: str):
        self.buf = open(path, "rb").read()
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        if self.model.SubgraphsLength() != 1:
            fail(f"{path}: expected one subgraph, found {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)
        # Reference kernels, no XNNPACK: the delegate would swallow the DEQUANTIZE/DENSIFY outputs we read below.
        self.interp = Interpreter(
            model_content=self.buf,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
        self.interp.allocate_tensors()
        self.consts: dict[int, np.ndarray] = {}

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    def ops(self):
        for i in range(self.graph.OperatorsLength()):
            yield self.graph.Operators(i)

    def tensor(self, idx: int):
        return self.graph.Tensors(idx)

    def shape(self, idx: int) -> list[int]:
        return tensor_shape(self.tensor(idx))

    def name(self, idx: int) -> str:
        return self.tensor(idx).Name().decode()

    def buffer_data(self, idx: int) -> np.ndarray | None:
        t = self.tensor(idx)
        b = self.model.Buffers(t.Buffer())
        if b is None or b.DataLength() == 0:
            return None
        if t.Sparsity() is not None:
            return None  # compressed: only DENSIFY's output (read from the interpreter) is usable
        dtype = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}.get(t.Type())
        if dtype is None:
            fail(f"tensor {self.name(idx)}: unsupported constant type {t.Type()}")
        return np.frombuffer(b.DataAsNumpy().tobytes(), dtype=dtype).reshape(self.shape(idx))

    def invoke(self, x_nhwc: np.ndarray) -> list[np.ndarray]:
        inp = self.interp.get_input_details()
        if len(inp) != 1:
            fail("expected one input")
        self.interp.set_tensor(inp[0]["index"], x_nhwc)
        self.interp.invoke()
        return [self.interp.get_tensor(self.graph.Outputs(i)).copy() for i in range(self.graph.OutputsLength())]

    def materialise_constants(self, x_nhwc: np.ndarray) -> None:
        """Fill self.consts: plain buffers, and the float32 outputs of DEQUANTIZE / DENSIFY chains."""
        self.invoke(x_nhwc)
        for i in range(self.graph.TensorsLength()):
            data = self.buffer_data(i)
            if data is not None:
                self.consts[i] = data
        for op in self.ops():
            kind = self.op_name(op)
            if kind not in ("DEQUANTIZE", "DENSIFY"):
                continue
            out = int(op.Outputs(0))
            value = self.interp.get_tensor(out).copy()
            if kind == "DEQUANTIZE":
                src = int(op.Inputs(0))
                # Cross-check the interpreter against a plain float16 -> float32 cast where the source is dense.
                if src in self.consts and not np.array_equal(self.consts[src].astype(np.float32), value):
                    fail(f"DEQUANTIZE {self.name(out)}: interpreter disagrees with float16 cast")
            self.consts[out] = value

    def const(self, idx: int) -> np.ndarray:
        if idx not in self.consts:
            fail(f"tensor {self.name(idx)} is not a constant")
        return self.consts[idx]


# ---------------------------------------------------------------------------------------------------------------
# Building the ONNX graph
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Value:
    name: str
    shape_nhwc: list[int]  # TFLite shape; 4-D values live in ONNX as NCHW

    @property
    def rank(self) -> int:
        return len(self.shape_nhwc)


@dataclass
class OnnxBuilder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.fresh(op.lower()), **attrs))
        return output


def same_pads(in_hw: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
    """TFLite SAME padding as explicit ONNX pads [top, left, bottom, right] (extra pixel at the end)."""
    before, after = [], []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


class Converter:
    def __init__(self, tfl: TfliteModel, spec: NetSpec):
        self.tfl = tfl
        self.spec = spec
        self.b = OnnxBuilder()
        self.values: dict[int, Value] = {}
        self.graph_outputs = {int(tfl.graph.Outputs(i)) for i in range(tfl.graph.OutputsLength())}

    def value_name(self, idx: int) -> str:
        # Graph outputs keep their TFLite names (the pipeline indexes outputs by position, people by name).
        return self.tfl.name(idx) if idx in self.graph_outputs else f"t{idx}"

    def inp(self, idx: int) -> Value:
        if idx not in self.values:
            fail(f"tensor {self.tfl.name(idx)} used before it is produced (or is an unexpected constant)")
        return self.values[idx]

    def set_out(self, idx: int, name: str) -> None:
        self.values[idx] = Value(name, self.tfl.shape(idx))

    def activation(self, act: int, x: str, out: str) -> str:
        if act == ACT_NONE:
            return self.b.node("Identity", [x], out) if x != out else out
        if act == ACT_RELU:
            return self.b.node("Relu", [x], out)
        if act in (ACT_RELU6, ACT_RELU_N1_TO_1):
            lo, hi = (0.0, 6.0) if act == ACT_RELU6 else (-1.0, 1.0)
            return self.b.node("Clip", [x, self.b.const("clip_min", np.array(lo, np.float32)),
                                        self.b.const("clip_max", np.array(hi, np.float32))], out)
        if act == ACT_TANH:
            return self.b.node("Tanh", [x], out)
        fail(f"unsupported fused activation {act}")

    def with_act(self, act: int, op: str, inputs: list[str], out_idx: int, **attrs) -> None:
        out = self.value_name(out_idx)
        if act == ACT_NONE:
            self.b.node(op, inputs, out, **attrs)
        else:
            pre = self.b.node(op, inputs, self.b.fresh(f"t{out_idx}_pre"), **attrs)
            self.activation(act, pre, out)
        self.set_out(out_idx, out)

    def to_nhwc(self, v: Value) -> str:
        return self.b.node("Transpose", [v.name], self.b.fresh(f"{v.name}_nhwc"), perm=list(TO_NHWC))

    # -- ops --------------------------------------------------------------------------------------------------

    def conv(self, op, depthwise: bool) -> None:
        ins = [int(i) for i in op.InputsAsNumpy()]
        x = self.inp(ins[0])
        w = self.tfl.const(ins[1]).astype(np.float32)
        o = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
        kh, kw = w.shape[1], w.shape[2]
        stride = [o.StrideH(), o.StrideW()]
        dilation = [o.DilationHFactor(), o.DilationWFactor()]
        in_c = x.shape_nhwc[3]
        if depthwise:
            # TFLite [1, KH, KW, C*M] -> ONNX [C*M, 1, KH, KW], one group per input channel.
            if o.DepthMultiplier() != 1 and w.shape[3] != in_c * o.DepthMultiplier():
                fail("depthwise multiplier mismatch")
            w_onnx = w.transpose(3, 0, 1, 2)
            group = in_c
        else:
            # TFLite [O, KH, KW, I] -> ONNX [O, I, KH, KW].
            w_onnx = w.transpose(0, 3, 1, 2)
            group = 1
            if w.shape[3] != in_c:
                fail(f"conv input channels {in_c} != weight {w.shape}")
        if o.Padding() == PAD_SAME:
            pads = same_pads(x.shape_nhwc[1:3], [kh, kw], stride, dilation)
        elif o.Padding() == PAD_VALID:
            pads = [0, 0, 0, 0]
        else:
            fail(f"unknown padding {o.Padding()}")
        inputs = [x.name, self.b.const("w", w_onnx)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.b.const("b", self.tfl.const(ins[2]).astype(np.float32)))
        self.with_act(o.FusedActivationFunction(), "Conv", inputs, int(op.Outputs(0)),
                      kernel_shape=[kh, kw], strides=stride, dilations=dilation, pads=pads, group=group)

    def add(self, op) -> None:
        a, c = (self.inp(int(i)) for i in op.InputsAsNumpy())
        if a.shape_nhwc != c.shape_nhwc:
            fail(f"ADD with broadcasting {a.shape_nhwc} + {c.shape_nhwc} not handled")
        o = options(op, tflite.AddOptions)
        self.with_act(o.FusedActivationFunction(), "Add", [a.name, c.name], int(op.Outputs(0)))

    def prelu(self, op) -> None:
        x_idx, a_idx = (int(i) for i in op.InputsAsNumpy())
        x = self.inp(x_idx)
        alpha = self.tfl.const(a_idx).astype(np.float32)
        c = x.shape_nhwc[-1]
        # TFLite alpha [1, 1, C] broadcasts over NHWC; in NCHW the per-channel slope is [C, 1, 1].
        if x.rank != 4 or alpha.size != c or alpha.shape[-1] != c:
            fail(f"PRELU alpha {alpha.shape} for input {x.shape_nhwc} not per-channel")
        out = self.value_name(int(op.Outputs(0)))
        self.b.node("PRelu", [x.name, self.b.const("alpha", alpha.reshape(c, 1, 1))], out)
        self.set_out(int(op.Outputs(0)), out)

    def max_pool(self, op) -> None:
        x = self.inp(int(op.Inputs(0)))
        o = options(op, tflite.Pool2DOptions)
        k = [o.FilterHeight(), o.FilterWidth()]
        s = [o.StrideH(), o.StrideW()]
        pads = same_pads(x.shape_nhwc[1:3], k, s, [1, 1]) if o.Padding() == PAD_SAME else [0, 0, 0, 0]
        self.with_act(o.FusedActivationFunction(), "MaxPool", [x.name], int(op.Outputs(0)),
                      kernel_shape=k, strides=s, pads=pads)

    def pad(self, op) -> None:
        ins = [int(i) for i in op.InputsAsNumpy()]
        x = self.inp(ins[0])
        paddings = self.tfl.const(ins[1]).astype(np.int64)  # [rank, 2] in NHWC order
        if len(ins) > 2:
            fail("PAD with an explicit constant value not handled")
        if x.rank == 4:
            paddings = paddings[list(TO_NCHW)]
        pads = np.concatenate([paddings[:, 0], paddings[:, 1]]).astype(np.int64)
        out = self.value_name(int(op.Outputs(0)))
        self.b.node("Pad", [x.name, self.b.const("pads", pads)], out, mode="constant")
        self.set_out(int(op.Outputs(0)), out)

    def reshape(self, op) -> None:
        x = self.inp(int(op.Inputs(0)))
        out_idx = int(op.Outputs(0))
        out_shape = self.tfl.shape(out_idx)
        src = self.to_nhwc(x) if x.rank == 4 else x.name
        out = self.value_name(out_idx)
        if out_shape[0] != 1:
            fail(f"reshape to {out_shape}: the first axis is not the batch")
        shape_const = self.b.const("shape", np.array([-1, *out_shape[1:]], np.int64))
        if len(out_shape) == 4:
            flat = self.b.node("Reshape", [src, shape_const], self.b.fresh(f"t{out_idx}_nhwc"))
            self.b.node("Transpose", [flat], out, perm=list(TO_NCHW))
        else:
            self.b.node("Reshape", [src, shape_const], out)
        self.set_out(out_idx, out)

    def concat(self, op) -> None:
        xs = [self.inp(int(i)) for i in op.InputsAsNumpy()]
        o = options(op, tflite.ConcatenationOptions)
        rank = xs[0].rank
        axis = o.Axis() % rank
        if rank == 4:
            axis = NHWC_TO_NCHW_AXIS[axis]
        self.with_act(o.FusedActivationFunction(), "Concat", [x.name for x in xs], int(op.Outputs(0)), axis=axis)

    def resize_bilinear(self, op) -> None:
        x = self.inp(int(op.Inputs(0)))
        out_idx = int(op.Outputs(0))
        o = options(op, tflite.ResizeBilinearOptions)
        if o.AlignCorners():
            mode = "align_corners"
        elif o.HalfPixelCenters():
            # TF's half-pixel centres clamp a negative source coordinate to 0, as ONNX half_pixel does in
            # onnxruntime and as burn's bilinear interpolate does with align_corners = false.
            mode = "half_pixel"
        else:
            # burn's interpolate has only align_corners on/off (half-pixel when off): refuse rather than
            # generate a model burn would run differently.
            fail("RESIZE_BILINEAR without half_pixel_centers/align_corners (asymmetric) is not supported by burn")
        in_hw = x.shape_nhwc[1:3]
        out_hw = self.tfl.shape(out_idx)[1:3]
        scales = np.array([1.0, 1.0, out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]], np.float32)
        if any(float(s) * i != o_ for s, i, o_ in zip(scales[2:], in_hw, out_hw)):
            fail(f"resize {in_hw} -> {out_hw} is not an exact scale")
        out = self.value_name(out_idx)
        self.b.node("Resize", [x.name, "", self.b.const("scales", scales)], out,
                    mode="linear", coordinate_transformation_mode=mode)
        self.set_out(out_idx, out)

    def depth_to_space(self, op) -> None:
        x = self.inp(int(op.Inputs(0)))
        o = options(op, tflite.DepthToSpaceOptions)
        # TFLite (NHWC): out[h*bs+i, w*bs+j, c] = in[h, w, (i*bs+j)*C_out + c], i.e. ONNX's DCR order.
        out = self.value_name(int(op.Outputs(0)))
        self.b.node("DepthToSpace", [x.name], out, blocksize=o.BlockSize(), mode="DCR")
        self.set_out(int(op.Outputs(0)), out)

    def unary(self, op, onnx_op: str) -> None:
        x = self.inp(int(op.Inputs(0)))
        out = self.value_name(int(op.Outputs(0)))
        self.b.node(onnx_op, [x.name], out)
        self.set_out(int(op.Outputs(0)), out)

    def mean(self, op) -> None:
        x_idx, axes_idx = (int(i) for i in op.InputsAsNumpy())
        x = self.inp(x_idx)
        axes = sorted(int(a) % x.rank for a in self.tfl.const(axes_idx).reshape(-1))
        keep = options(op, tflite.ReducerOptions).KeepDims()
        if x.rank == 4:
            onnx_axes = sorted(NHWC_TO_NCHW_AXIS[a] for a in axes)
            if not keep:
                # The kept axes must come out in the same order in both layouts, or the result is permuted.
                kept_nhwc = [a for a in range(4) if a not in axes]
                kept_nchw = [a for a in TO_NCHW if a not in axes]
                if kept_nhwc != kept_nchw:
                    fail(f"MEAN over {axes} without keep_dims changes the axis order")
        else:
            onnx_axes = axes
        self.with_act(ACT_NONE, "ReduceMean", [x.name], int(op.Outputs(0)), axes=onnx_axes, keepdims=int(keep))

    def fully_connected(self, op) -> None:
        ins = [int(i) for i in op.InputsAsNumpy()]
        x = self.inp(ins[0])
        w = self.tfl.const(ins[1]).astype(np.float32)  # [out, in]
        o = options(op, tflite.FullyConnectedOptions)
        out_idx = int(op.Outputs(0))
        if o.KeepNumDims():
            fail("FULLY_CONNECTED keep_num_dims not handled")
        src = x.name
        if x.rank != 2 or x.shape_nhwc[0] != 1:
            # TFLite flattens the input in NHWC order: transpose back before flattening.
            flat_src = self.to_nhwc(x) if x.rank == 4 else x.name
            src = self.b.node("Reshape", [flat_src, self.b.const("shape", np.array([-1, w.shape[1]], np.int64))],
                              self.b.fresh(f"t{out_idx}_flat"))
        inputs = [src, self.b.const("w", w)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.b.const("b", self.tfl.const(ins[2]).astype(np.float32)))
        self.with_act(o.FusedActivationFunction(), "Gemm", inputs, out_idx, transB=1)

    def strided_slice(self, op) -> None:
        ins = [int(i) for i in op.InputsAsNumpy()]
        x = self.inp(ins[0])
        begin, end, strides = (self.tfl.const(i).astype(np.int64).reshape(-1) for i in ins[1:4])
        o = options(op, tflite.StridedSliceOptions)
        if o.EllipsisMask() or o.NewAxisMask() or o.ShrinkAxisMask():
            fail("STRIDED_SLICE with ellipsis/new-axis/shrink masks not handled")
        starts, ends, axes, steps = [], [], [], []
        for axis in range(x.rank):
            dim = x.shape_nhwc[axis]
            b = 0 if o.BeginMask() & (1 << axis) else int(begin[axis])
            e = dim if o.EndMask() & (1 << axis) else int(end[axis])
            s = int(strides[axis])
            if (b, e, s) == (0, dim, 1):
                continue  # full range: burn's Slice wants only the axes that change
            starts.append(b)
            ends.append(e)
            axes.append(NHWC_TO_NCHW_AXIS[axis] if x.rank == 4 else axis)
            steps.append(s)
        out = self.value_name(int(op.Outputs(0)))
        self.b.node("Slice", [x.name, self.b.const("starts", np.array(starts, np.int64)),
                              self.b.const("ends", np.array(ends, np.int64)),
                              self.b.const("axes", np.array(axes, np.int64)),
                              self.b.const("steps", np.array(steps, np.int64))], out)
        self.set_out(int(op.Outputs(0)), out)

    # -- graph ------------------------------------------------------------------------------------------------

    def convert(self) -> onnx.ModelProto:
        g = self.tfl.graph
        if g.InputsLength() != 1:
            fail("expected one input")
        in_idx = int(g.Inputs(0))
        in_shape = self.tfl.shape(in_idx)
        if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3:
            fail(f"unexpected input shape {in_shape}")
        in_name = self.tfl.name(in_idx)
        self.values[in_idx] = Value(in_name, in_shape)

        handlers = {
            "CONV_2D": lambda op: self.conv(op, depthwise=False),
            "DEPTHWISE_CONV_2D": lambda op: self.conv(op, depthwise=True),
            "ADD": self.add,
            "RELU": lambda op: self.unary(op, "Relu"),
            "LOGISTIC": lambda op: self.unary(op, "Sigmoid"),
            "PRELU": self.prelu,
            "MAX_POOL_2D": self.max_pool,
            "PAD": self.pad,
            "RESHAPE": self.reshape,
            "CONCATENATION": self.concat,
            "RESIZE_BILINEAR": self.resize_bilinear,
            "DEPTH_TO_SPACE": self.depth_to_space,
            "MEAN": self.mean,
            "FULLY_CONNECTED": self.fully_connected,
            "STRIDED_SLICE": self.strided_slice,
        }
        for op in self.tfl.ops():
            kind = self.tfl.op_name(op)
            if kind in ("DEQUANTIZE", "DENSIFY"):
                continue  # weights: materialised by the interpreter
            if kind not in handlers:
                fail(f"unsupported op {kind}")
            handlers[kind](op)

        keep = self.spec.keep_outputs
        out_idxs = [int(g.Outputs(i)) for i in range(g.OutputsLength())]
        if keep is not None:
            out_idxs = [i for i in out_idxs if self.tfl.name(i) in keep]
            if len(out_idxs) != len(keep):
                fail(f"outputs {keep} not all found")
        outputs = []
        for i in out_idxs:
            v = self.inp(i)
            shape = [v.shape_nhwc[d] for d in TO_NCHW] if v.rank == 4 else v.shape_nhwc
            outputs.append(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, [BATCH, *shape[1:]]))
        nchw_in = [BATCH, *[in_shape[d] for d in TO_NCHW][1:]]
        graph = helper.make_graph(
            self.b.nodes, self.spec.name,
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, nchw_in)],
            outputs, self.b.initializers)
        graph = prune(graph)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name=PRODUCER, producer_version=PRODUCER_VERSION)
        model.ir_version = 8
        model.doc_string = (f"MediaPipe 0.10.14 {self.spec.wheel_path}, converted to NCHW by {PRODUCER}. "
                            "Apache-2.0 (MediaPipe).")
        onnx.checker.check_model(model, full_check=True)
        return model


def prune(graph: onnx.GraphProto) -> onnx.GraphProto:
    """Drop nodes and initializers that no kept output depends on (the pruned segmentation head)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    inits = [t for t in graph.initializer if t.name in needed]
    return helper.make_graph(kept, graph.name, list(graph.input), list(graph.output), inits)


# ---------------------------------------------------------------------------------------------------------------
# Inputs, checking, fixtures
# ---------------------------------------------------------------------------------------------------------------


def crop_image(image: Image.Image, crop: Crop, size: tuple[int, int]) -> Image.Image:
    if crop.letterbox:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        box_img = canvas
    else:
        half = crop.size / 2
        box = tuple(int(round(v)) for v in (crop.cx - half, crop.cy - half, crop.cx + half, crop.cy + half))
        box_img = image.crop(box)  # overhang is filled with black
    h, w = size
    return box_img.resize((w, h), Image.BILINEAR)


def normalise(u8: np.ndarray, spec: NetSpec) -> np.ndarray:
    # Same float32 arithmetic as the Rust fixture test: u8 as f32 * scale + offset.
    return (u8.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset))[None].astype(np.float32)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def check(spec: NetSpec, model: onnx.ModelProto, ref: dict[str, np.ndarray], noise: dict[str, np.ndarray],
          x_nhwc: np.ndarray) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(x_nhwc.transpose(TO_NCHW))})
    diffs = {}
    for name, value in zip(names, got):
        if value.ndim == 4:
            value = value.transpose(TO_NHWC)
        expected = ref[name]
        if value.shape != expected.shape:
            fail(f"{spec.name}/{name}: shape {value.shape} != TFLite {expected.shape}")
        diff = float(np.max(np.abs(value - expected)))
        floor = float(np.max(np.abs(noise[name] - expected)))
        tol = ABS_TOL + REL_TOL * float(np.max(np.abs(expected)))
        diffs[name] = {"max_abs_diff": diff, "tolerance": tol, "tflite_xnnpack_vs_reference": floor}
        print(f"  {name:14s} {str(list(expected.shape)):18s} max|onnx - tflite| = {diff:.2e} (tolerance {tol:.2e}; "
              f"TFLite XNNPACK vs reference kernels: {floor:.2e})")
        if not diff <= tol:
            fail(f"{spec.name}/{name}: max abs diff {diff} > {tol}")
    # A batch of two (the crop and its mirror image) gives each image what it gives alone.
    mirror = np.ascontiguousarray(x_nhwc[:, :, ::-1, :])
    batch = np.concatenate([x_nhwc, mirror]).transpose(TO_NCHW)
    pair = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(batch)})
    alone = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(mirror.transpose(TO_NCHW))})
    for name, both, first, second in zip(names, pair, got, alone):
        for i, want in enumerate((first, second)):
            diff = float(np.max(np.abs(both[i:i + 1] - want)))
            if not diff <= 1e-5 * max(1.0, float(np.max(np.abs(want)))):
                fail(f"{spec.name}/{name}: image {i} of a batch of 2 differs from it alone by {diff}")
    print(f"  batch of 2 (crop, mirror): each as alone")
    return diffs


def write_fixture(fixture_dir: str, spec: NetSpec, crop_u8: Image.Image, tfl: TfliteModel,
                  ref: dict[str, np.ndarray], out_names: list[str]) -> None:
    os.makedirs(fixture_dir, exist_ok=True)
    # PNG without timestamps/metadata: Pillow writes none by default, so this is deterministic.
    crop_u8.save(os.path.join(fixture_dir, "input.png"), optimize=False, compress_level=9)
    outputs = []
    for name in out_names:
        value = ref[name].astype("<f4")
        fname = f"{name}.f32"
        value.tofile(os.path.join(fixture_dir, fname))
        outputs.append({"name": name, "shape_nhwc": list(value.shape), "file": fname,
                        "sum": float(np.sum(value.astype(np.float64)))})
    meta = {
        "net": spec.name,
        "source": "obama.jpg (face_recognition 1.3.0 tests/test_images, public domain)",
        "crop": {"cx": spec.crop.cx, "cy": spec.crop.cy, "size": spec.crop.size, "letterbox": spec.crop.letterbox},
        "input": {"file": "input.png", "shape_nhwc": [1, *tfl.shape(int(tfl.graph.Inputs(0)))[1:]],
                  "scale": spec.scale, "offset": spec.offset},
        "outputs": outputs,
        "reference": "TFLite interpreter (ai-edge-litert, reference kernels), float32, little-endian, NHWC",
    }
    with open(os.path.join(fixture_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def convert_one(spec: NetSpec, wheel_dir: str, image: Image.Image, out_dir: str) -> dict:
    path = os.path.join(wheel_dir, spec.wheel_path)
    print(f"{spec.name}: {path}")
    tfl = TfliteModel(path)
    h, w = tfl.shape(int(tfl.graph.Inputs(0)))[1:3]
    crop = crop_image(image, spec.crop, (h, w))
    x = normalise(np.asarray(crop, dtype=np.uint8), spec)
    tfl.materialise_constants(x)
    ref_list = tfl.invoke(x)
    all_names = [tfl.name(int(tfl.graph.Outputs(i))) for i in range(tfl.graph.OutputsLength())]
    ref = dict(zip(all_names, ref_list))
    # The same model on TFLite's default (XNNPACK) kernels: float32 noise floor, printed for comparison.
    xnn = Interpreter(model_content=tfl.buf)
    xnn.allocate_tensors()
    xnn.set_tensor(xnn.get_input_details()[0]["index"], x)
    xnn.invoke()
    noise = {n: xnn.get_tensor(int(tfl.graph.Outputs(i))).copy() for i, n in enumerate(all_names)}

    model = Converter(tfl, spec).convert()
    diffs = check(spec, model, ref, noise, x)
    onnx_path = os.path.join(out_dir, f"{spec.name}.onnx")
    onnx.save(model, onnx_path)
    out_names = [o.name for o in model.graph.output]
    write_fixture(os.path.join(out_dir, "fixtures", spec.name), spec, crop, tfl, ref, out_names)
    return {"tflite_sha256": sha256(path), "onnx_sha256": sha256(onnx_path), "outputs": diffs,
            "nodes": len(model.graph.node)}


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel-dir", required=True,
                    help="the unzipped wheel's mediapipe/ folder (holds modules/...)")
    ap.add_argument("--image", default=os.path.join(here, "..", "..", "shared", "testdata", "images", "obama.jpg"))
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--only", help="convert one net (by name)")
    args = ap.parse_args()

    image = Image.open(args.image).convert("RGB")
    report = {}
    for spec in NETS:
        if args.only and spec.name != args.only:
            continue
        try:
            report[spec.name] = convert_one(spec, args.wheel_dir, image, args.out_dir)
        except ConversionError as e:
            print(f"FAILED {spec.name}: {e}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
