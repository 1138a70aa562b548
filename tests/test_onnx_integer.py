"""Integer ONNX (issue 23, `--to onnx --precision int8-integer`): the integer-only TFLite file
converted by tf2onnx into QDQ and completed (converters/onnx_integer.complete_qdq) so that no
compute node is left float; within the int8 budget on onnxruntime and OpenVINO."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

QDQ = ("QuantizeLinear", "DequantizeLinear")
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def float_nodes(proto) -> list[str]:
    """Every node (Q/DQ aside) with a float activation not read from a DequantizeLinear or
    written into anything but QuantizeLinear, or a float constant of more than one value read
    directly (weights must come through DequantizeLinear): walked here, independently of the
    manifest's count (formats/onnx.py)."""
    graph = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.value_info, *graph.input, *graph.output]}
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    bad = []
    for node in graph.node:
        if node.op_type in QDQ:
            continue
        for name in filter(None, node.input):
            if name in inits:
                if inits[name].data_type in FLOATS and np.prod(inits[name].dims) > 1:
                    bad.append(f"{node.op_type} {node.name}: float constant {name}")
            elif types[name] in FLOATS and producer[name].op_type != "DequantizeLinear":
                bad.append(f"{node.op_type} {node.name}: float input {name}")
        for name in node.output:
            if types[name] in FLOATS and (name in outputs or any(
                    r.op_type != "QuantizeLinear" for r in readers.get(name, []))):
                bad.append(f"{node.op_type} {node.name}: float output {name}")
    return bad


def _qdq(name, scale, zero, dtype):
    """Initializers and the Q -> DQ pair of ``name`` (scale, zero point of ``dtype``)."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.array(zero, dtype), f"{name}_z")]
    nodes = [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
             helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                              [f"{name}_dq"])]
    return inits, nodes


def _tf2onnx_like_head(bias_type=np.int64):
    """A small graph shaped as tf2onnx writes a quantized TFLite head: x -> Q/DQ (int16) ->
    MatMul (DQ'd int8 weights) -> Add (DQ'd int64 bias; int32: a graph onnxruntime loads) ->
    Relu -> Q/DQ (int16, zero point 0) -> Sqrt -> Reciprocal -> Q/DQ (int16) -> output; beside
    it MatMul -> Add -> Relu -> Q/DQ (int8, zero point -128) -> output."""
    rng = np.random.default_rng(0)
    ws = np.full(3, 0.02, np.float32)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (4, 3)).astype(np.int8), "w"),
             numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
             numpy_helper.from_array(rng.integers(-300, 300, 3).astype(bias_type), "b"),
             numpy_helper.from_array((ws * 0.05).astype(np.float32), "bs"),
             numpy_helper.from_array(np.zeros(3, bias_type), "bz")]
    pairs = {}
    for name, scale, zero, dtype in (("x", 0.05, 0, np.int16), ("h", 0.01, 0, np.int16),
                                     ("r", 0.001, 0, np.int16), ("g", 0.01, -128, np.int8)):
        more, pairs[name] = _qdq(name, scale, zero, dtype)
        inits += more
    nodes = [
        *pairs["x"],
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w_dq"], axis=1),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["b_dq"], axis=0),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"]),
        helper.make_node("Add", ["mm", "b_dq"], ["fc"]),
        helper.make_node("Relu", ["fc"], ["h"]),
        *pairs["h"],
        helper.make_node("Sqrt", ["h_dq"], ["sq"]),
        helper.make_node("Reciprocal", ["sq"], ["r"]),
        *pairs["r"],
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm2"]),
        helper.make_node("Add", ["mm2", "b_dq"], ["fc2"]),
        helper.make_node("Relu", ["fc2"], ["g"]),
        *pairs["g"],
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("r_dq", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("g_dq", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _run(proto, x):
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_complete_qdq_leaves_no_float_node_and_computes_the_same():
    """The rewrites (int64 bias -> int32, MatMul + Add -> Gemm, ReLU dropped at zero point
    -128 or given its own int16 QDQ pair, Sqrt + Reciprocal -> Pow) leave no float compute
    node, and the graph computes the same integers as before on onnxruntime."""
    from ssrconv.converters.onnx_integer import complete_qdq
    from ssrconv.targets import INT16_QDQ_OPSET
    from ssrconv.formats.onnx import _split_qdq

    before = _tf2onnx_like_head()
    assert len(float_nodes(before)) >= 5  # MatMul, Add, Relu (x2), Sqrt, Reciprocal
    after = complete_qdq(before)
    onnx.checker.check_model(after, full_check=True)
    assert float_nodes(after) == []
    integer, floating = _split_qdq(after)
    assert not floating and integer == {"Gemm": 2, "Relu": 1, "Pow": 1}
    assert max(o.version for o in after.opset_import if o.domain == "") == INT16_QDQ_OPSET
    biases = {i.name: i.data_type for i in after.graph.initializer}
    assert biases["b"] == biases["bz"] == TensorProto.INT32
    # the same function: onnxruntime reads no int64 DequantizeLinear, so compared on the graph
    # built with int32 biases
    loadable = _tf2onnx_like_head(np.int32)
    x = np.random.default_rng(1).uniform(-3, 3, (64, 4)).astype(np.float32)
    (r, g), (r_want, g_want) = _run(complete_qdq(loadable), x), _run(loadable, x)
    np.testing.assert_array_equal(g, g_want)  # the ReLU dropped at zero point -128: exact
    # Pow(x, -0.5) and 1 / sqrt(x) may differ in the last bit of a float32, so at most one
    # output step (0.001) on a value that lands on a rounding boundary
    assert np.abs(r - r_want).max() <= 0.001 + 1e-7 and np.mean(r == r_want) > 0.95


def test_gemm_goes_where_its_bias_is_ready():
    """tf2onnx may list a bias's DequantizeLinear after the MatMul reading it is written (the
    16x8 graph's stage-3 deltas): the Gemm replacing MatMul + Add still comes after every
    input's producer (onnx's checker refuses the graph otherwise)."""
    from ssrconv.converters.onnx_integer import complete_qdq

    proto = _tf2onnx_like_head(np.int32)
    nodes = list(proto.graph.node)
    bias = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == "b")
    matmul = next(n for n in nodes if n.op_type == "MatMul")
    order = [n for n in nodes if n is not bias]
    order.insert(order.index(matmul) + 1, bias)  # still a topological order
    copies = [type(n)() for n in order]
    for copy, node in zip(copies, order):
        copy.CopyFrom(node)
    del proto.graph.node[:]
    proto.graph.node.extend(copies)
    onnx.checker.check_model(proto, full_check=True)
    after = complete_qdq(proto)
    onnx.checker.check_model(after, full_check=True)
    assert [n.op_type for n in after.graph.node].count("Gemm") == 2


def _dense(weights, w_scales, bias, b_scales):
    """x -> Q/DQ (int16) -> MatMul (DQ'd int8 ``weights``) -> Add (DQ'd ``bias``) -> Q/DQ
    (int16) -> y, as tf2onnx writes one FULLY_CONNECTED of a 16x8 file."""
    inits = [numpy_helper.from_array(weights.astype(np.int8), "w"),
             numpy_helper.from_array(np.asarray(w_scales, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(len(w_scales), np.int8), "wz"),
             numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.asarray(b_scales, np.float32), "bs"),
             numpy_helper.from_array(np.zeros(len(b_scales), bias.dtype), "bz")]
    more_x, x = _qdq("x", 0.05, 0, np.int16)
    more_h, h = _qdq("h", 0.01, 0, np.int16)
    nodes = [*x,
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w_dq"], axis=1),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["b_dq"], axis=0),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"]),
             helper.make_node("Add", ["mm", "b_dq"], ["h"]), *h]
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("h_dq", TensorProto.FLOAT, ["n", 3])],
        inits + more_x + more_h)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_a_dead_channels_overflowing_bias_gets_a_live_channels_scales():
    """TFLite gives an output channel whose int8 weights are all zero the scale epsilon (the
    PyTorch port's 16x8 file: weight scale 4.8e-36, bias scale 1.5e-40, bias int64's maximum),
    beyond int32: that channel takes the widest in-range channel's scales (zero weights at any
    scale, its ~1e-21 bias 0), the same outputs as the layer written so by hand; a live
    channel beyond int32 is refused."""
    from ssrconv.converters.onnx_integer import complete_qdq
    from ssrconv.errors import Int8RecipeError

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (4, 3))
    weights[:, 0] = 0
    live_bias = rng.integers(-300, 300, 3)
    dead = np.array([np.iinfo(np.int64).max, *live_bias[1:]], np.int64)
    after = complete_qdq(_dense(weights, [4.8e-36, 0.02, 0.03], dead, [1.5e-40, 1e-3, 1.5e-3]))
    onnx.checker.check_model(after, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    assert inits["b"].dtype == np.int32 and inits["b"][0] == 0
    np.testing.assert_array_equal(inits["ws"], np.float32([0.03, 0.02, 0.03]))
    want = _dense(weights, [0.03, 0.02, 0.03], np.array([0, *live_bias[1:]], np.int32),
                  [1.5e-3, 1e-3, 1.5e-3])
    x = rng.uniform(-3, 3, (64, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(after, x)[0], _run(want, x)[0])
    # the port's layer: zero weights in every channel, so its outputs are its biases
    zero = np.zeros((4, 3), np.int64)
    biases = np.array([-2**30, np.iinfo(np.int64).max, -2**30], np.int64)
    after = complete_qdq(_dense(zero, [6e-9, 4.8e-36, 1e-8], biases, [3e-10, 2.4e-37, 5e-10]))
    want = _dense(zero, [6e-9, 1e-8, 1e-8], np.array([-2**30, 0, -2**30], np.int32),
                  [3e-10, 5e-10, 5e-10])
    np.testing.assert_array_equal(_run(after, x)[0], _run(want, x)[0])
    live = np.array([2**40, *live_bias[1:]], np.int64)
    with pytest.raises(Int8RecipeError, match="not all zero"):
        complete_qdq(_dense(rng.integers(1, 100, (4, 3)), [0.01, 0.02, 0.03], live,
                            [5e-4, 1e-3, 1.5e-3]))
    # a layer dead throughout at epsilon scales: no channel's scale brings the bias within
    # int32, refused (a cast would have wrapped int64's maximum to -1)
    tiny = np.array([0, np.iinfo(np.int64).max, 0], np.int64)
    with pytest.raises(Int8RecipeError, match="at any of its channels' scales"):
        complete_qdq(_dense(zero, [4.8e-36] * 3, tiny, [1.5e-40] * 3))


def test_manifest_counts_a_float_node_as_float():
    """formats/onnx's count flags a compute node whose output is not quantized."""
    from ssrconv.formats.onnx import _split_qdq

    integer, floating = _split_qdq(_tf2onnx_like_head())
    assert floating["MatMul"] == 2 and floating["Relu"] == 2 and floating["Sqrt"] == 1


@pytest.fixture(scope="session")
def integer_onnx(exported):
    return exported("onnx-int8-integer")


@pytest.mark.slow
def test_every_compute_node_is_between_dequantize_and_quantize(integer_onnx):
    proto = onnx.load(str(integer_onnx.path))
    assert float_nodes(proto) == []
    manifest = integer_onnx.manifest
    assert manifest["integer_only"] is True and manifest["float_ops"] == {}
    ops = manifest["integer_ops"]
    # every conv (38, the pools as depthwise convs), every Dense layer as a Gemm, the merge
    assert ops["Conv"] == 38 and ops["Gemm"] == 36 and ops["Tanh"] == 20 and ops["Pow"] == 2
    assert manifest["opset"] == 21 and [e["name"] for e in manifest["inputs"]] == ["face_bgr"]
    assert [e["name"] for e in manifest["outputs"]] == ["age", "p_male"]
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:  # weights int8, biases int32, head activations int16
        if node.op_type in ("Conv", "Gemm"):
            weights = next(n for n in proto.graph.node if node.input[1] in n.output)
            assert weights.op_type == "DequantizeLinear"
            assert inits[weights.input[0]].data_type == TensorProto.INT8, node.name
    zero_points = {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type in QDQ}
    assert {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32} <= zero_points


@pytest.mark.slow
def test_it_is_the_tflite_recipes_file_and_meets_the_int8_budget(integer_onnx, exported,
                                                                  budget_check):
    """The same fine-tuned integers as tflite-int8 (one cache entry), within the whole
    int8 budget on onnxruntime and OpenVINO (figures: docs/INT8.md, "Integer ONNX")."""
    from ssrconv.loading import load_runtime

    tflite = exported("tflite-int8")
    assert (integer_onnx.manifest["fine_tuning"]["cache"]["key"]
            == tflite.manifest["fine_tuning"]["cache"]["key"])
    for engine in ("onnxruntime", "openvino"):
        found, stats = budget_check(load_runtime(integer_onnx.path, engine=engine), "int8")
        assert not found, (engine, found, stats)


def test_tract_refuses_int16_qdq_by_design(tmp_path):
    """tract 0.23 has no int16 DequantizeLinear: the engine says so before loading (parity
    reports the pair as not run), and an 8-bit QDQ graph is not refused."""
    from ssrconv.converters.onnx_integer import complete_qdq
    from ssrconv.targets import ENGINES

    wide, narrow = tmp_path / "int16.onnx", tmp_path / "int8.onnx"
    onnx.save(complete_qdq(_tf2onnx_like_head()), str(wide))
    proto = _tf2onnx_like_head(np.int32)
    for tensor in proto.graph.initializer:
        if tensor.data_type == TensorProto.INT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.int8),
                                                    tensor.name))
    onnx.save(proto, str(narrow))
    assert "int16" in ENGINES["tract"].refuses(wide)
    assert ENGINES["tract"].refuses(narrow) is None


@pytest.mark.slow
def test_a_second_export_gives_the_same_bytes(integer_onnx, faces_dir, tmp_path):
    """tf2onnx's node order followed the process's string hash seed and its merged constants'
    names varied: it runs with the seed fixed and the constants are renamed, so an export in
    this process matches the session's (another process, or the `exported` one)."""
    from ssrconv.exporter import export

    (again,) = export(to=("onnx",), precision=("int8-integer",), calibration=faces_dir,
                      out=tmp_path / "again")
    assert again.manifest["fine_tuning"]["cache"]["status"] == "hit"
    assert again.sha256 == integer_onnx.sha256


def test_canonical_order_is_the_same_whatever_order_tf2onnx_wrote():
    """tf2onnx's TFLite path lists the constants' DequantizeLinear nodes in an order that varies
    from run to run (the session export and a second one differed in 214 of 708 positions):
    two valid orders of one graph, with their constants named differently, come out as one
    graph (nodes, constant names) after ``_canonical_order``."""
    from onnx import TensorProto, helper, numpy_helper

    from ssrconv.converters.onnx_integer import _canonical_order

    def graph(order, names):
        inits = [numpy_helper.from_array(np.array(v, np.float32), name)
                 for v, name in zip((1.0, 2.0, 0.5), names)]
        q = [numpy_helper.from_array(np.array(v, np.int8), f"q{name}")
             for v, name in zip((3, 4), names)]
        nodes = [helper.make_node("DequantizeLinear", [f"q{names[0]}", names[2]], ["a"]),
                 helper.make_node("DequantizeLinear", [f"q{names[1]}", names[2]], ["b"]),
                 helper.make_node("Mul", ["x", "a"], ["xa"]),
                 helper.make_node("Add", ["xa", "b"], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        g = helper.make_graph([nodes[k] for k in order], "g", [x], [y], inits + q)
        return helper.make_model(g)

    one = graph([0, 1, 2, 3], ["c1", "c2", "s"])
    two = graph([1, 0, 2, 3], ["k9", "k3", "t"])
    assert [n.input[0] for n in one.graph.node] != [n.input[0] for n in two.graph.node]
    for proto in (one, two):
        _canonical_order(proto)
    assert [(n.op_type, list(n.input)) for n in one.graph.node] == \
        [(n.op_type, list(n.input)) for n in two.graph.node]


@pytest.fixture(scope="session")
def a16w8_onnx(exported):
    return exported("onnx-int16x8")


@pytest.mark.slow
def test_a16w8_is_int16_qdq_everywhere(a16w8_onnx):
    """onnx-int16x8 (A16W8, the form ONNX-fed NPUs such as Qualcomm QNN take): every compute
    node between DequantizeLinear and QuantizeLinear, every activation int16, every weight
    int8; tract, which has no int16 DequantizeLinear, refuses it before loading."""
    from ssrconv.targets import ENGINES

    proto = onnx.load(str(a16w8_onnx.path))
    assert float_nodes(proto) == []
    manifest = a16w8_onnx.manifest
    assert manifest["integer_only"] is True and manifest["float_ops"] == {}
    ops = manifest["integer_ops"]
    # 38 convs and pools (as depthwise convs) + 6: per head, the stage-2 summary's 4x4 pool as two
    # 2x2 steps and the stage-3 summary's 8x8 as three (Variant.average_pools_stride2)
    assert ops["Conv"] == 44 and ops["Gemm"] == 36 and ops["Tanh"] == 20
    assert manifest["opset"] == 21 and [e["name"] for e in manifest["inputs"]] == ["face_bgr"]
    assert [e["name"] for e in manifest["outputs"]] == ["age", "p_male"]
    assert "fine_tuning" not in manifest and "tflite-int16x8" in manifest["int8_recipe"]
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weights = producer[node.input[1]]
            assert weights.op_type == "DequantizeLinear"
            assert inits[weights.input[0]].data_type == TensorProto.INT8, node.name
        if node.op_type == "QuantizeLinear":  # every activation, the input's included
            assert inits[node.input[2]].data_type == TensorProto.INT16, node.name
    assert "int16" in ENGINES["tract"].refuses(a16w8_onnx.path)


@pytest.mark.slow
def test_a16w8_meets_the_int8_budget(a16w8_onnx, budget_check):
    """Within the int8 budget on onnxruntime and OpenVINO (figures: docs/INT8.md, "Integer
    ONNX": A16W8)."""
    from ssrconv.loading import load_runtime

    for engine in ("onnxruntime", "openvino"):
        found, stats = budget_check(load_runtime(a16w8_onnx.path, engine=engine), "int8")
        assert not found, (engine, found, stats)


@pytest.mark.slow
def test_a16w8_second_export_gives_the_same_bytes(a16w8_onnx, faces_dir, tmp_path):
    """The same bytes from a second export (its tf2onnx in another child process), as
    onnx-int8-integer's."""
    from ssrconv.exporter import export

    (again,) = export(to=("onnx",), precision=("int16x8",), calibration=faces_dir,
                      out=tmp_path / "again")
    assert again.sha256 == a16w8_onnx.sha256


# A stage tensor lies in [0, 1] (probabilities) or [-1, 1] (tanh shifts): a located tensor
# further than this from the reference's is not the stage (the integers, another layer).
STAGE_DRIFT_BOUND = 0.25


@pytest.mark.slow
@pytest.mark.parametrize("key", ["onnx-int8-integer", "onnx-int16x8"])
def test_the_integer_files_stage_tensors_are_found_and_read_as_values(key, exported, stage_drift):
    """parity's "where drift starts" reads the 18 stage tensors of a QDQ file: each value is
    one integer tensor under up to three names (the float before QuantizeLinear, the integers,
    the DequantizeLinear's float) plus requantized copies, and Concat reads some integers
    directly (onnx_rt.stage_candidates lists each once, dequantized); it was "n/a: 3 tensors
    match" for both rows."""
    stages = stage_drift(exported(key).path)
    assert max(stages.values()) < STAGE_DRIFT_BOUND, stages
