"""TensorRT's documented ONNX operator support, per TensorRT version, as data.

`mmgraph.export.tensorrt.check_compatibility` reads these tables to tell, before any GPU is
involved, whether a part's ONNX graph will parse on a given TensorRT (a Jetson's is often
older than a workstation's).

Sources, all from the ONNX-TensorRT parser repository (github.com/onnx/onnx-tensorrt):

* ``docs/operators.md`` at commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc -- the TensorRT 8.5
  table ("supports operators up to Opset 17").
* ``docs/operators.md`` for TensorRT 10.15 ("inclusive range of opset 9 to opset 24"), the
  newest table found; read from the stored copy of that file (its commit hash was not shown
  by the code index we read it from).
* ``docs/operators.md`` for TensorRT 10.0 -- only its header ("opset 9 to opset 20").
* ``docs/Changelog.md`` (10.15 edition) -- which release added which operator or lifted which
  restriction. The 8.6, 10.3, 10.13 and 10.14 tables below are DERIVED: the 8.5 table plus
  the 8.6 EA/GA changelog entries, and the 10.15 table minus what the changelog says arrived
  after the version in question (e.g. "TensorRT 10.14 GA: Added support for the `Attention`
  operator"; "10.15 GA: Added support for `RotaryEmbedding`, `RMSNormalization` and
  `TensorScatter`"). Per-op dtypes for the derived 10.x tables are the 10.15 ones.
* ``onnxOpImporters.cpp`` at commit 0137504e2b25fe5253bd85d26b073378fb67805b (10.6 era):
  "The bias tensor is required to be an initializer for the Conv operator."
* The TensorRT 8.x Resize importer's assertion "Resize scales must be initializer!"
  (``importResize``, as quoted by MMDeploy's TensorRT plugin tutorial); the 10.15 table instead
  accepts tensor ``scales`` ("When `scales` is a tensor input, `axes` must be an iota vector").
* The 8.6 max opset (17) is also stated by NVIDIA's Orin DLA operator table
  ("TensorRT 8.6 supports operators up to Opset 17").

Not found, so left out: a stated max opset for 10.13 and 10.14 (``max_opset`` is None there and
the opset is not checked), and per-op dtype tables for 8.6/10.3/10.13/10.14 as their own
documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Data types, in the tables' spelling. ONNX TensorProto names map onto them below.

F2 = ("FP32", "FP16")
F3 = ("FP32", "FP16", "BF16")
NUM10 = F3 + ("INT32", "INT64")
ANY10 = NUM10 + ("BOOL",)

ONNX_TO_TABLE = {
    "FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "INT32": "INT32", "INT64": "INT64",
    "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL", "DOUBLE": "DOUBLE",
    "FLOAT8E4M3FN": "FP8", "FLOAT4E2M1": "FP4", "INT4": "INT4",
}


def _group(types: tuple[str, ...], ops: str) -> dict[str, tuple[str, ...]]:
    return {op: types for op in ops.split()}


# ---------------------------------------------------------------------------------------------
# TensorRT 10.15 docs/operators.md: every op marked Y, grouped by its "Supported Types" cell.

_TRT_10_15_TYPES: dict[str, tuple[str, ...]] = {
    **_group(F3, """Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu
        Clip Conv ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm
        GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish
        Hardmax ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log
        LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization
        ParametricSoftplus PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
        RandomUniformLike Reciprocal Resize RMSNormalization RNN RotaryEmbedding Round
        ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh
        ThresholdedRelu Upsample"""),
    **_group(NUM10, """Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN
        Less LessOrEqual Max Min Mod Mul Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum
        ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
        Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK"""),
    **_group(ANY10, """Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If
        Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu
        Unsqueeze Where"""),
    **_group(F2, """BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish
        NonMaxSuppression NonZero RoiAlign"""),
    **_group(("BOOL",), "And Not Or Xor"),
    "Attention": F3 + ("INT8", "FP8"),
    "Cast": F3 + ("INT32", "INT64", "UINT8", "BOOL"),
    "CastLike": F3 + ("INT32", "INT64", "UINT8", "BOOL"),
    "Constant": F3 + ("FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"),
    "ConstantOfShape": F3 + ("FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"),
    "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"),
    "Gelu": F3 + ("INT8", "INT32", "INT64"),
    "Mean": F3 + ("FP8", "INT32", "INT64"),
    "STFT": ("FP32",),
    "TensorScatter": F3 + ("INT32",),
}

# Marked N in the 10.15 table: known to the documentation, and not supported.
_TRT_10_15_UNSUPPORTED = frozenset("""AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot
    BitwiseOr BitwiseXor Col2Im CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det
    DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
    Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
    QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
    SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique""".split())

# Ops the changelog lists as added after a given 10.x release (so absent from that release).
_ADDED_AFTER_10_3 = ("BlackmanWindow", "HammingWindow", "HannWindow",  # 10.4
                     "STFT",  # 10.5
                     "Attention",  # 10.14
                     "RotaryEmbedding", "RMSNormalization", "TensorScatter")  # 10.15
_ADDED_AFTER_10_13 = ("Attention", "RotaryEmbedding", "RMSNormalization", "TensorScatter")
_ADDED_AFTER_10_14 = ("RotaryEmbedding", "RMSNormalization", "TensorScatter")

# ---------------------------------------------------------------------------------------------
# TensorRT 8.5 docs/operators.md (commit 6d0ab7be), then the 8.6 changelog on top.

_F2_I8 = F2 + ("INT8",)
_F2_I32 = F2 + ("INT32",)
_TRT_8_5_TYPES: dict[str, tuple[str, ...]] = {
    **_group(F2, """Acos Acosh ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization Ceil Celu
        Cos Cosh CumSum Dropout Einsum Erf Exp Floor GridSample GRU ImageScaler
        InstanceNormalization Log LogSoftmax LRN LSTM LpNormalization MatMul
        MeanVarianceNormalization NonMaxSuppression NonZero Pow QuantizeLinear RandomNormal
        RandomNormalLike RandomUniform RandomUniformLike Reciprocal ReduceL1 ReduceL2
        ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
        ReduceSumSquare Resize ReverseSequence RNN RoiAlign Scan Sin Sinh Softmax Sqrt Tan TopK
        Upsample"""),
    **_group(_F2_I8, """Clip Conv ConvTranspose Elu Gemm GlobalAveragePool GlobalLpPool
        GlobalMaxPool HardSigmoid HardSwish LeakyRelu LpPool MaxPool ParametricSoftplus PRelu
        Relu Round ScaledTanh Selu Sigmoid Softplus Softsign Tanh ThresholdedRelu"""),
    **_group(_F2_I32, """Abs Add DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less
        LessOrEqual Max Mean Min Mod Mul Neg Range Shrink SpaceToDepth Sub Sum"""),
    **_group(_F2_I8 + ("INT32",), "AveragePool Pad Scatter ScatterElements ScatterND Sign"),
    **_group(_F2_I32 + ("BOOL",), "Expand EyeLike Flatten If Loop OneHot Split Tile Where"),
    **_group(_F2_I8 + ("INT32", "BOOL"), """Cast Concat Constant Gather GatherElements GatherND
        Identity Reshape Shape Size Slice Squeeze Transpose Trilu Unsqueeze"""),
    **_group(("BOOL",), "And Not Or Xor"),
    "ConstantOfShape": ("FP32",),
    "DequantizeLinear": ("INT8",),
}
_TRT_8_5_UNSUPPORTED = frozenset("""Bernoulli BitShift BlackmanWindow Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow Hardmax
    IsInf LayerNormalization MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
    QLinearMatMul STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
    SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer
    TfIdfVectorizer Unique""".split())

# 8.6 EA: "Added support for GroupNormalization, LayerNormalization, IsInf operations" (no dtype
# cell for them was found: FP32/FP16 like their neighbours is assumed), and "Added support for
# INT32 input types for Argmin, Argmax, and TopK".
_TRT_8_6_TYPES = {**_TRT_8_5_TYPES,
                  **_group(F2, "GroupNormalization LayerNormalization IsInf"),
                  **_group(_F2_I32, "ArgMax ArgMin TopK")}
_TRT_8_6_UNSUPPORTED = _TRT_8_5_UNSUPPORTED - {"LayerNormalization", "IsInf"}

# ---------------------------------------------------------------------------------------------
# Inputs that must be build-time constants (an initializer or a Constant node's output).
# {op: {input index: (input name, the documentation's words)}}

ConstInputs = dict[str, dict[int, tuple[str, str]]]

_REDUCE_OPS = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
               "ReduceProd ReduceSum ReduceSumSquare").split()
_AXES_INITIALIZER = {op: {1: ("axes", "`axes` must be an initializer")} for op in _REDUCE_OPS}
_CONV_BIAS = {2: ("B", "the bias tensor is required to be an initializer for Conv")}

_CONST_10_15: ConstInputs = {
    **_AXES_INITIALIZER,
    "Conv": _CONV_BIAS,
    "CumSum": {1: ("axis", "`axis` must be a build-time constant")},
    "Dropout": {2: ("training_mode", "`is_training` must be an initializer and evaluate to False")},
    "OneHot": {1: ("depth", "`depth` must be a build-time constant")},
    "STFT": {1: ("frame_step", "`frame_step` and `window` must be an initializer"),
             2: ("window", "`frame_step` and `window` must be an initializer")},
    "Squeeze": {1: ("axes", "`axes` must be resolvable to a constant")},
    "Unsqueeze": {1: ("axes", "`axes` must be resolvable to a constant")},
}
# 10.4 GA: "Added support for tensor `axes` for `Pad` operations" -- so 10.3 needs constant axes.
_CONST_10_3: ConstInputs = {**_CONST_10_15,
                            "Pad": {3: ("axes", "tensor `axes` for Pad arrived in 10.4")}}
_CONST_8_6: ConstInputs = {
    **_AXES_INITIALIZER,
    "Conv": _CONV_BIAS,
    "CumSum": {1: ("axis", "`axis` must be an initializer")},
    "InstanceNormalization": {1: ("scale", "`scale` and `B` must be initializers"),
                              2: ("B", "`scale` and `B` must be initializers")},
    # 10.3 GA: "Added support for tensor `axes` inputs for `Slice` nodes".
    "Slice": {3: ("axes", "`axes` must be an initializer")},
    "Squeeze": {1: ("axes", "`axes` must be an initializer")},
    "Unsqueeze": {1: ("axes", "`axes` must be a constant tensor")},
    "Resize": {2: ("scales", "importResize: \"Resize scales must be initializer!\"")},
    # TopK's K became dynamic in 8.6 EA ("Added support for TopK operators with dynamic K").
}

# Inputs that may be computed, with a caveat worth a warning (10.x Resize).
_CAVEATS_10: ConstInputs = {
    "Resize": {2: ("scales", "when `scales` is a tensor input, `axes` must be an iota vector "
                             "of length rank(input)")},
}


@dataclass(frozen=True)
class TrtVersion:
    """What one TensorRT release's ONNX parser accepts."""

    version: str
    max_opset: int | None  # None: not stated in the sources read
    ops: dict[str, tuple[str, ...]]  # op -> supported types
    unsupported: frozenset[str]  # ops the table lists as N
    const_inputs: ConstInputs
    caveats: ConstInputs = field(default_factory=dict)
    int64: str = "native"  # "native" | "cast" (parser casts INT64 to INT32, before 9.0)
    bf16: bool = True
    strongly_typed: bool = True  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    source: str = ""

    def supports(self, op: str) -> bool:
        return op in self.ops


def _without(types: dict, ops) -> dict:
    return {k: v for k, v in types.items() if k not in ops}


VERSIONS: dict[str, TrtVersion] = {
    "8.6": TrtVersion(
        "8.6", 17, _TRT_8_6_TYPES, _TRT_8_6_UNSUPPORTED, _CONST_8_6, int64="cast", bf16=False,
        strongly_typed=False,
        source="operators.md (8.5, 6d0ab7be) + Changelog 8.6 EA/GA; opset 17 per the 8.6 docs"),
    "10.3": TrtVersion(
        "10.3", 20, _without(_TRT_10_15_TYPES, _ADDED_AFTER_10_3),
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_3), _CONST_10_3, _CAVEATS_10,
        source="operators.md (10.15) minus Changelog additions after 10.3; opset 20 per the "
               "10.0 operators.md (no ONNX update in the changelog before 10.6). JetPack 6"),
    "10.13": TrtVersion(
        "10.13", None, _without(_TRT_10_15_TYPES, _ADDED_AFTER_10_13),
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_13), _CONST_10_15, _CAVEATS_10,
        source="operators.md (10.15) minus Changelog additions after 10.13"),
    "10.14": TrtVersion(
        "10.14", None, _without(_TRT_10_15_TYPES, _ADDED_AFTER_10_14),
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_14), _CONST_10_15, _CAVEATS_10,
        source="operators.md (10.15) minus Changelog 10.15 additions; Attention from 10.14"),
    "10.15": TrtVersion(
        "10.15", 24, dict(_TRT_10_15_TYPES), _TRT_10_15_UNSUPPORTED, _CONST_10_15, _CAVEATS_10,
        source="operators.md (10.15): opset 9 to 24"),
}


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def resolve(trt_version: str) -> tuple[TrtVersion, str]:
    """The table for `trt_version` ("10.3", "10.3.0.30", "10.8"), and a note when it is a stand-in.

    A release without its own table gets the newest documented one of the same major version
    that is not newer: what it accepts is then a lower bound, never an invention.
    """
    want = _key(str(trt_version))[:2]
    if not want:
        raise ValueError(f"not a TensorRT version: {trt_version!r}")
    exact = ".".join(map(str, want))
    if exact in VERSIONS:
        return VERSIONS[exact], ""
    older = [v for v in VERSIONS if _key(v)[0] == want[0] and _key(v) <= want]
    if not older:
        raise ValueError(f"no ONNX operator table for TensorRT {trt_version} "
                         f"(known: {', '.join(VERSIONS)})")
    best = max(older, key=_key)
    return VERSIONS[best], (f"TensorRT {trt_version} has no table of its own here; "
                            f"checked against {best}'s (a lower bound)")


def versions_supporting(op: str) -> list[str]:
    """The documented TensorRT versions whose parser imports `op`."""
    return [v for v, t in VERSIONS.items() if t.supports(op)]
