"""TensorRT's documented ONNX operator support, per TensorRT version, as data.

`mmgraph.export.tensorrt.check_compatibility` reads these tables to tell, before any GPU is
involved, whether a part's ONNX graph will parse on a given TensorRT (a Jetson's is often
older than a workstation's), and whether each node keeps within its op's documented
restrictions (a restriction is data here, `Rule`, checked per node).

Sources, all from the ONNX-TensorRT parser repository (github.com/onnx/onnx-tensorrt):

* ``docs/operators.md`` on the release branches ``8.6-GA`` (ee0b139b: "supports operators up
  to Opset 17") and ``10.1-GA`` (96e78110: "opset 9 to opset 20"), read from the branches
  themselves: the 8.6 table below IS that document.
* ``docs/operators.md`` for TensorRT 10.15 ("inclusive range of opset 9 to opset 24"), the
  newest table found, with the restrictions quoted in `Rule.doc`.
* ``docs/Changelog.md`` (10.15 edition): which release added which operator, type or
  capability. The 10.3, 10.13 and 10.14 tables are DERIVED from it: 10.3 is the 10.15 table
  minus what arrived after 10.3 (operators: windows 10.4, STFT 10.5, Attention 10.14,
  RotaryEmbedding/RMSNormalization/TensorScatter 10.15; types: FP4 10.8, integer `Pow`
  exponents 10.8 and bases 10.12) -- which is also the 10.1-GA table plus 10.2/10.3's entries.
* The importers: ``Conv`` with a tensor weight or bias goes to ``convMultiInput`` on every
  branch read (8.6-GA ``builtin_op_importers.cpp``, 10.1-GA ``onnxOpImporters.cpp``), so a
  computed bias parses; the "bias tensor is required to be an initializer" assertion sits after
  that dispatch. ``Resize`` with tensor ``scales`` goes to ``resizeShapeTensor`` on 8.6-GA; the
  "Resize scales must be an initializer" assertion exists only on the 7.0 branch. The 8.6
  ``LayerNormalization`` importer returns its first output only, and its ``ScatterND`` importer
  ignores ``reduction`` (``addScatterLayer`` kND), so both restrictions hold on 8.6 as well.

Max opsets: 8.6 = 17, 10.3 = 20 (the 10.0/10.1 documents; the Changelog records no ONNX
update before 10.6: derived), 10.14 = 24 (its parser's operators.md: "opset 9 to opset 24",
as read for issue 15 from the parser pinned by TensorRT release/10.14; the copy stored here is
the 10.15 one), 10.15 = 24 (documented). 10.13 is not stated in any source read, so its opset
is not checked (`max_opset` None). `TrtVersion.opset_source` says which is which.
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
# TensorRT 8.6 docs/operators.md (branch 8.6-GA, ee0b139b), grouped by "Supported Types".

_F2_I8 = F2 + ("INT8",)
_F2_I32 = F2 + ("INT32",)
_TRT_8_6_TYPES: dict[str, tuple[str, ...]] = {
    **_group(F2, """Acos Acosh Asin Asinh Atan Atanh BatchNormalization Ceil Celu Cos Cosh
        CumSum Dropout Einsum Erf Exp Floor GRU GridSample GroupNormalization ImageScaler
        InstanceNormalization IsInf LRN LSTM LayerNormalization Log LogSoftmax LpNormalization
        MatMul MeanVarianceNormalization NonMaxSuppression NonZero Pow QuantizeLinear RNN
        RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal ReduceL1
        ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
        ReduceSumSquare Resize RoiAlign Scan Sin Sinh Softmax Sqrt Tan Upsample"""),
    **_group(_F2_I32, """Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual
        IsNaN Less LessOrEqual Max Mean Min Mod Mul Neg Range Shrink SpaceToDepth Sub Sum TopK"""),
    **_group(_F2_I8, """Clip Conv ConvTranspose Elu Gemm GlobalAveragePool GlobalLpPool
        GlobalMaxPool HardSigmoid HardSwish LeakyRelu LpPool MaxPool PRelu ParametricSoftplus
        Relu Round ScaledTanh Selu Sigmoid Softplus Softsign Tanh ThresholdedRelu"""),
    **_group(_F2_I32 + ("INT8", "BOOL"), """Concat Constant Gather GatherElements GatherND
        Identity Reshape ReverseSequence Shape Size Slice Squeeze Transpose Trilu Unsqueeze"""),
    **_group(_F2_I32 + ("BOOL",), "Expand EyeLike Flatten If Loop OneHot Split Tile Where"),
    **_group(_F2_I8 + ("INT32",), "AveragePool Pad Scatter ScatterElements ScatterND Sign"),
    **_group(("BOOL",), "And Not Or Xor"),
    "Cast": _F2_I32 + ("INT8", "UINT8", "BOOL"),
    "ConstantOfShape": ("FP32",),
    "DequantizeLinear": ("INT8",),
}
_TRT_8_6_UNSUPPORTED = frozenset("""Bernoulli BitShift BlackmanWindow Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow Hardmax
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss
    Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique""".split())

# 10.3: the 10.15 cells less the types the Changelog dates later (they agree with 10.1-GA's).
_TRT_10_3_TYPE_CHANGES = {
    "Constant": F3 + ("INT32", "INT64", "BOOL"),  # FP8/FP4/INT4 cells: not in 10.1-GA's table
    "ConstantOfShape": F3 + ("INT32", "INT64", "BOOL"),
    "DequantizeLinear": ("INT8", "FP8", "INT4"),  # FP4: 10.8
    "Pow": F3,  # integer exponents: 10.8, integer bases: 10.12
}

# ---------------------------------------------------------------------------------------------
# Inputs that must be build-time constants (an initializer or a Constant node's output).
# {op: {input index: (input name, the documentation's words)}}. Conv's bias is not one: a
# tensor bias goes to convMultiInput on every branch read.

ConstInputs = dict[str, dict[int, tuple[str, str]]]

_REDUCE_OPS = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
               "ReduceProd ReduceSum ReduceSumSquare").split()
_AXES_INITIALIZER = {op: {1: ("axes", "`axes` must be an initializer")} for op in _REDUCE_OPS}

_CONST_10_15: ConstInputs = {
    **_AXES_INITIALIZER,
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
    "CumSum": {1: ("axis", "`axis` must be an initializer")},
    "InstanceNormalization": {1: ("scale", "`scale` and `B` must be initializers"),
                              2: ("B", "`scale` and `B` must be initializers")},
    # 10.3 GA: "Added support for tensor `axes` inputs for `Slice` nodes".
    "Slice": {3: ("axes", "`axes` must be an initializer")},
    "Squeeze": {1: ("axes", "`axes` must be an initializer")},
    "Unsqueeze": {1: ("axes", "`axes` must be a constant tensor")},
    # Reduce* axes: not restricted in the 8.6 table (opset 13-17 ReduceSum only takes them as
    # an input); TopK's K became dynamic in 8.6 EA.
}

# Inputs that may be computed, with a caveat worth a warning (10.x Resize).
_CAVEATS_10: ConstInputs = {
    "Resize": {2: ("scales", "when `scales` is a tensor input, `axes` must be an iota vector "
                             "of length rank(input)")},
}


# ---------------------------------------------------------------------------------------------
# Restrictions on a node beyond its op and types, as data: `tensorrt._Checker` has one check
# per `kind`, and each finding quotes `doc` and names `source`.


@dataclass(frozen=True)
class Rule:
    """One documented restriction of an op.

    kinds: "rank" (inputs `index` have rank `value`), "no_input" (inputs `index` absent),
    "no_output" (outputs `index` unused), "attr" (attribute `attr` equals `value`, its default
    when absent), "below" (constant input `index` < `value`), "dtype" (inputs `index` of a type
    in `value`), "branches_same_rank"/"branches_broadcastable" (If), "static_scan" (Loop),
    "einsum_plain" (no ellipsis, diagonal or broadcasting).
    """

    kind: str
    doc: str
    index: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    attr: str = ""
    value: object = None
    source: str = "operators.md"


_ATTENTION = (
    Rule("rank", "`Q`, `K`, `V` and `attn_mask` must be 4D", (0, 1, 2, 3),
         ("Q", "K", "V", "attn_mask"), value=4),
    Rule("no_input", "`past_key`, `past_value` and `nonpad_kv_seqlen` inputs are unsupported",
         (4, 5, 6), ("past_key", "past_value", "nonpad_kv_seqlen")),
    Rule("no_output", "`present_key`, `present_value` and `qk_matmul_output` outputs are "
         "unsupported", (1, 2, 3), ("present_key", "present_value", "qk_matmul_output")),
    Rule("attr", "`qk_matmul_output_mode` and `softcap` attributes are unsupported",
         attr="qk_matmul_output_mode", value=0),
    Rule("attr", "`qk_matmul_output_mode` and `softcap` attributes are unsupported",
         attr="softcap", value=0.0),
)
_SCATTER_ND = (Rule("attr", "`reduction` other than `none` is not supported", attr="reduction",
                    value="none"),)
_TOPK = (Rule("attr", "`sorted` must be 1", attr="sorted", value=1),
         Rule("below", "`K` input must be less than 3840", (1,), ("K",), value=3840))
_LAYER_NORM = (Rule("no_output", "only the first output `Y` is supported", (1, 2),
                    ("Mean", "InvStdDev")),)
_IF_10 = (Rule("branches_same_rank", "output tensors of the two conditional branches must have "
               "the same rank"),)
_LOOP_10 = (Rule("static_scan", "scan output length cannot be dynamic", (0,), ("M",)),)

_RULES_10_3: dict[str, tuple[Rule, ...]] = {
    "ScatterND": _SCATTER_ND, "TopK": _TOPK, "LayerNormalization": _LAYER_NORM,
    "If": _IF_10, "Loop": _LOOP_10,
    "Pow": (Rule("dtype", "integer exponents arrived in 10.8, integer bases in 10.12", (0, 1),
                 ("X", "Y"), value=("FLOAT", "FLOAT16", "BFLOAT16"), source="Changelog"),),
}
_RULES_10_13 = {k: v for k, v in _RULES_10_3.items() if k != "Pow"}
_RULES_10_14 = {**_RULES_10_13, "Attention": _ATTENTION}
_RULES_10_15 = {**_RULES_10_14, "RotaryEmbedding": (
    Rule("dtype", "`position_ids` must be INT64", (3,), ("position_ids",), value=("INT64",)),)}
_RULES_8_6: dict[str, tuple[Rule, ...]] = {
    "Einsum": (Rule("einsum_plain", "ellipsis and diagonal operations are not supported; "
                    "broadcasting between inputs is not supported"),),
    "If": (Rule("branches_broadcastable", "output tensors of the two conditional branches "
                "must have broadcastable shapes"),),
    # Not in the 8.6 table, but its importers: RETURN_FIRST_OUTPUT for LayerNormalization,
    # and addScatterLayer(kND) with no reduction at all (a reduction would be silently dropped).
    "LayerNormalization": tuple(Rule(r.kind, r.doc, r.index, r.names, source="8.6 importer")
                                for r in _LAYER_NORM),
    "ScatterND": tuple(Rule(r.kind, r.doc, attr=r.attr, value=r.value, source="8.6 importer")
                       for r in _SCATTER_ND),
}

# Data types a release predates, in ONNX spelling: (the release that added it, per Changelog).
_LATER_TYPES_8_6 = {"BFLOAT16": "9.0", "FLOAT8E4M3FN": "9.0", "INT4": "10.0",
                    "FLOAT4E2M1": "10.8"}
_LATER_TYPES_10_3 = {"FLOAT4E2M1": "10.8"}


@dataclass(frozen=True)
class TrtVersion:
    """What one TensorRT release's ONNX parser accepts."""

    version: str
    max_opset: int | None  # None: not stated in the sources read
    ops: dict[str, tuple[str, ...]]  # op -> supported types
    unsupported: frozenset[str]  # ops the table lists as N
    const_inputs: ConstInputs
    caveats: ConstInputs = field(default_factory=dict)
    rules: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    later_types: dict[str, str] = field(default_factory=dict)  # ONNX type -> release adding it
    int64: str = "native"  # "native" | "cast" (parser casts INT64 to INT32, before 9.0)
    bf16: bool = True
    strongly_typed: bool = True  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    source: str = ""
    opset_source: str = ""  # "documented: ..." or "derived: ..." or "not stated"

    def supports(self, op: str) -> bool:
        return op in self.ops


def _without(types: dict, ops) -> dict:
    return {k: v for k, v in types.items() if k not in ops}


VERSIONS: dict[str, TrtVersion] = {
    "8.6": TrtVersion(
        "8.6", 17, _TRT_8_6_TYPES, _TRT_8_6_UNSUPPORTED, _CONST_8_6, rules=_RULES_8_6,
        later_types=_LATER_TYPES_8_6, int64="cast", bf16=False, strongly_typed=False,
        source="operators.md (branch 8.6-GA, ee0b139b)",
        opset_source="documented: 8.6-GA operators.md, 'up to Opset 17'"),
    "10.3": TrtVersion(
        "10.3", 20, {**_without(_TRT_10_15_TYPES, _ADDED_AFTER_10_3), **_TRT_10_3_TYPE_CHANGES},
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_3), _CONST_10_3, _CAVEATS_10,
        rules=_RULES_10_3, later_types=_LATER_TYPES_10_3,
        source="operators.md (10.15) minus Changelog additions after 10.3 (= 10.1-GA's table "
               "plus 10.2/10.3's entries). JetPack 6",
        opset_source="derived: 20 in the 10.0/10.1-GA operators.md, and no ONNX update in the "
                     "Changelog before 10.6"),
    "10.13": TrtVersion(
        "10.13", None, _without(_TRT_10_15_TYPES, _ADDED_AFTER_10_13),
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_13), _CONST_10_15, _CAVEATS_10,
        rules=_RULES_10_13, source="operators.md (10.15) minus Changelog additions after 10.13",
        opset_source="not stated in the sources read"),
    "10.14": TrtVersion(
        "10.14", 24, _without(_TRT_10_15_TYPES, _ADDED_AFTER_10_14),
        _TRT_10_15_UNSUPPORTED | set(_ADDED_AFTER_10_14), _CONST_10_15, _CAVEATS_10,
        rules=_RULES_10_14,
        source="operators.md (10.15) minus Changelog 10.15 additions; Attention from 10.14",
        opset_source="documented: the 10.14 parser's operators.md, 'opset 9 to opset 24'"),
    "10.15": TrtVersion(
        "10.15", 24, dict(_TRT_10_15_TYPES), _TRT_10_15_UNSUPPORTED, _CONST_10_15, _CAVEATS_10,
        rules=_RULES_10_15, source="operators.md (10.15)",
        opset_source="documented: 10.15 operators.md, 'opset 9 to opset 24'"),
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
