"""The numpy MIL interpreter against the Keras reference, on real faces, without CoreML.

Exports are made here (module scope, converted once each, only when a test needs them) by the
project's CoreML converter, which runs the default coremltools pipeline minus
``common::fuse_elementwise_to_batchnorm``: in
coremltools 9.0 that pass rewrites BatchNormalization's folded ``x * scale + offset`` as a
``batch_norm`` with variance 1 and the default epsilon 1e-5, so every BN scale in the export
shrinks by 1/sqrt(1 + 1e-5) (-5e-6 relative). Harmless for an fp16 model, but it moves an
fp32 export's P(male) by up to 2.3e-4 on these faces, which would hide the interpreter's own
accuracy (its fp32 result is within 3e-6 of a float64 run of the same program).
"""

from __future__ import annotations

import numpy as np
import pytest

from ssrconv.errors import InputError, SsrconvError
from ssrconv.formats.mil_numpy import SUPPORTED_OPS, MilProgram, UnsupportedMilOp

N_FACES = 64  # of the 300 dev faces: enough for the budgets, keeps the module well under a minute
OUTPUTS = {"age-gender": ["age", "p_male"], "age": ["age"]}


def _pipeline():
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    return pipeline


@pytest.fixture(scope="module")
def export(tmp_path_factory, references):
    """export(task, precision, image=None) -> path of a saved .mlpackage (made once).

    Tensor-input packages come from ssrconv's own CoreML converter (the code users run); the
    image-input case uses a custom scale and bias, which the converter never emits (it fixes
    scale 1, bias 0), to check the interpreter applies the program's own image ops.
    """
    import types

    import coremltools as ct

    from ssrconv.converters import coreml
    from ssrconv.reference.model import with_named_outputs
    from ssrconv.targets import TARGETS

    cache = {}

    def make(task: str, precision: str, image: tuple | None = None):
        key = (task, precision, image)
        if key in cache:
            return cache[key]
        path = tmp_path_factory.mktemp("mil") / f"{task}_{precision}_{len(cache)}.mlpackage"
        model = with_named_outputs(references(task).reference.model, task)
        if image is None:
            target = TARGETS["coreml-fp16" if precision == "FLOAT16" else "coreml-fp32"]
            coreml.convert(model, target, types.SimpleNamespace(image_input=False, batch=None), path,
                           None, {})
            cache[key] = path
            return path
        scale, bias = image
        face = ct.ImageType(name="face_bgr", shape=(1, 64, 64, 3), scale=scale,
                            bias=list(bias), color_layout=ct.colorlayout.BGR)
        converted = ct.convert(model, source="tensorflow", convert_to="mlprogram", inputs=[face],
                               compute_precision=getattr(ct.precision, precision),
                               minimum_deployment_target=ct.target.iOS15,
                               pass_pipeline=_pipeline())
        spec = converted.get_spec()
        for feature, name in zip(list(spec.description.output), OUTPUTS[task]):
            ct.utils.rename_feature(spec, feature.name, name)
        ct.models.MLModel(spec, weights_dir=converted.weights_dir, skip_model_load=True).save(str(path))
        cache[key] = path
        return path

    return make


@pytest.fixture(scope="module")
def program(export):
    """program(task, precision, image=None) -> MilProgram of that export (loaded once)."""
    cache = {}

    def get(*key):
        if key not in cache:
            cache[key] = MilProgram.from_mlpackage(export(*key))
        return cache[key]

    return get


@pytest.fixture(scope="module")
def batch(faces):
    return faces.inputs[:N_FACES]


@pytest.fixture(scope="module")
def keras_out(references, batch):
    cache = {}

    def get(task):
        if task not in cache:
            cache[task] = references(task).reference.predict(batch)
        return cache[task]

    return get


@pytest.fixture(scope="module")
def mil_out(program, batch):
    """Outputs of the age-gender program at each precision on the face batch (run once)."""
    cache = {}

    def get(precision):
        if precision not in cache:
            cache[precision] = program("age-gender", precision).run({"face_bgr": batch})
        return cache[precision]

    return get


def test_loads_without_coreml_and_describes_the_program(program):
    program = program("age-gender", "FLOAT16")
    assert program.input_names == ["face_bgr"]
    assert program.output_names == ["age", "p_male"]
    assert set(program.op_types) <= SUPPORTED_OPS
    for op in ("const", "conv", "linear", "avg_pool", "max_pool", "real_div", "cast"):
        assert program.op_types[op] > 0, op
    assert program.op_types["conv"] == 28  # 14 per head
    # fp16 from the input cast on; fp32 only for the two output casts
    assert program.compute_dtypes["fp16"] > 200
    assert program.compute_dtypes["fp32"] == 2


def test_fp32_program_matches_keras(mil_out, keras_out):
    out, ref = mil_out("FLOAT32"), keras_out("age-gender")
    assert out["age"].shape == out["p_male"].shape == (N_FACES, 1)
    assert out["age"].dtype == np.float32
    assert np.abs(out["age"][:, 0] - ref["age"]).max() <= 0.01
    assert np.abs(out["p_male"][:, 0] - ref["p_male"]).max() <= 1e-4


def test_fp16_program_matches_keras_within_fp16_budget(mil_out, keras_out):
    out, ref = mil_out("FLOAT16"), keras_out("age-gender")
    age_diff = np.abs(out["age"][:, 0].astype(np.float64) - ref["age"])
    assert age_diff.max() <= 0.25
    assert age_diff.mean() <= 0.05
    assert np.array_equal(out["p_male"][:, 0] > 0.5, ref["p_male"] > 0.5)


def test_fp16_is_honoured_not_computed_in_fp32(mil_out):
    fp16, fp32 = mil_out("FLOAT16"), mil_out("FLOAT32")
    for name in ("age", "p_male"):
        assert not np.array_equal(fp16[name], fp32[name]), name
    # and the difference is fp16-sized, not a bug-sized one
    assert 1e-4 < np.abs(fp16["age"] - fp32["age"]).max() < 0.25
    # the fp16 program's last ops ran in fp16: its fp32 outputs are fp16 values cast up
    # (weights alone being fp16 would not do this)
    for name in ("age", "p_male"):
        assert np.array_equal(fp16[name], fp16[name].astype(np.float16).astype(np.float32))
        assert not np.array_equal(fp32[name], fp32[name].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("size", [1, 7])
def test_batch_sizes(program, batch, mil_out, size):
    out = program("age-gender", "FLOAT32").run({"face_bgr": batch[:size]})
    full = mil_out("FLOAT32")
    for name in ("age", "p_male"):
        assert out[name].shape == (size, 1)
        np.testing.assert_allclose(out[name], full[name][:size], rtol=1e-5, atol=1e-5)


def test_single_head_age_with_image_input(program, batch, references):
    """The single-head age model, with an ImageType BGR input fed as N x 64 x 64 x 3 BGR.

    An ML Program has no spec preprocessing: the ImageType's scale and bias are mul/add ops
    on the input, so interpreting the program applies them. The image input has batch 1:
    7 rows run one by one, as MLModel.predict on 7 images would.
    """
    scale, bias = 0.5, (10.0, 20.0, 30.0)  # per channel in the image's order: B, G, R
    program = program("age", "FLOAT32", (scale, bias))
    assert program.input_names == ["face_bgr"] and program.output_names == ["age"]
    assert program.op_types["conv"] == 14
    rows = batch[:7]
    out = program.run({"face_bgr": rows})["age"]
    assert out.shape == (7, 1)
    age = references("age").reference
    expected = age.predict(rows * scale + np.array(bias, np.float32))["age"]
    assert np.abs(out[:, 0] - expected).max() <= 0.01


def test_unknown_op_raises_naming_type_and_op(export):
    import coremltools as ct

    path = export("age-gender", "FLOAT32")
    spec = ct.utils.load_spec(str(path))
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    op = next(op for op in block.operations if op.type == "tanh")
    op.type = "softsign"  # a real MIL op (same signature) the interpreter does not implement
    name = op.outputs[0].name
    with pytest.raises(UnsupportedMilOp) as err:
        MilProgram.from_spec(spec, path / "Data" / "com.apple.CoreML" / "weights")
    assert isinstance(err.value, SsrconvError)
    assert "softsign" in str(err.value) and name in str(err.value)
    assert (err.value.op_type, err.value.op_name) == ("softsign", name)


def test_bad_package_paths_name_the_path(tmp_path):
    missing = tmp_path / "nope.mlpackage"
    with pytest.raises(SsrconvError, match="nope.mlpackage"):
        MilProgram.from_mlpackage(missing)
    not_a_package = tmp_path / "empty.mlpackage"
    not_a_package.mkdir()
    with pytest.raises(SsrconvError, match="empty.mlpackage"):
        MilProgram.from_mlpackage(not_a_package)
    a_file = tmp_path / "model.mlmodel"
    a_file.write_bytes(b"not a model")
    with pytest.raises(SsrconvError, match="model.mlmodel"):
        MilProgram.from_mlpackage(a_file)


def test_missing_weights_are_reported(export, tmp_path):
    import coremltools as ct

    spec = ct.utils.load_spec(str(export("age-gender", "FLOAT32")))
    with pytest.raises(SsrconvError, match="weights"):
        MilProgram.from_spec(spec, tmp_path / "no-weights", source="x.mlpackage")


def test_feeds_are_checked_against_the_spec(program, batch):
    program = program("age-gender", "FLOAT32")
    with pytest.raises(InputError, match="face_bgr"):
        program.run({"face_bgr": batch[:2, :, :, :2]})  # 2 channels
    with pytest.raises(InputError, match="256"):
        program.run({"face_bgr": np.zeros((257, 64, 64, 3), np.float32)})  # RangeDim(1, 256)
    with pytest.raises(InputError, match="missing"):
        program.run({})
    with pytest.raises(InputError, match="unknown"):
        program.run({"face_bgr": batch[:1], "extra": batch[:1]})


def test_conv_and_pool_geometry_matches_keras(tmp_path):
    """Padding 'same' (odd pixel after), strides, dilations, groups (depthwise), same-padded
    pools (padding excluded from averages) on a small random model, fp32, against Keras.

    (Keras' own grouped Conv2D does not convert: Keras traces it as an XLA-compiled call;
    grouped convs are tested below with the fast graph's GroupedConv2D.)
    """
    import coremltools as ct
    import keras
    from keras import layers

    rng = np.random.default_rng(0)
    inp = keras.Input((11, 10, 4), name="x")
    outs = [
        layers.Conv2D(5, 3, strides=2, padding="same")(inp),
        layers.Conv2D(3, (2, 4), padding="same", dilation_rate=2)(inp),
        # Equal strides, non-square kernel: TF's CPU depthwise kernel refuses unequal strides
        # on CPUs where oneDNN does not take the op (AVX2 EPYC: "only supports equal length
        # strides"), so Keras could not compute the expected values there.
        layers.DepthwiseConv2D((3, 2), strides=2, padding="same")(inp),
        layers.AveragePooling2D(3, strides=2, padding="same")(inp),
        layers.MaxPooling2D((2, 3), strides=(2, 2), padding="same")(inp),
    ]
    model = keras.Model(inp, [layers.Flatten()(o) for o in outs])
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype(np.float32))
    mlmodel = ct.convert(model, source="tensorflow", convert_to="mlprogram",
                         inputs=[ct.TensorType(name="x", shape=(2, 11, 10, 4))],
                         compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=ct.target.iOS15)
    mlmodel.save(str(tmp_path / "geometry.mlpackage"))
    program = MilProgram.from_mlpackage(tmp_path / "geometry.mlpackage")
    x = rng.normal(size=(2, 11, 10, 4)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    got = program.run({"x": x})
    assert len(got) == len(expected)
    for want, name in zip(expected, program.output_names):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize(("groups", "c_in", "c_out", "padding", "strides"),
                         [(2, 6, 8, "valid", 1), (3, 6, 9, "same", 2)])
def test_grouped_conv_matches_per_group_convs(tmp_path, groups, c_in, c_out, padding, strides):
    """conv(groups=G) as the fast export graph emits it (ssrconv.graph.builder.GroupedConv2D,
    coremltools' conv with groups) against G separate Keras convs on the channel slices: each
    group must see only its own input channels and write only its own outputs."""
    import coremltools as ct
    import keras
    from keras import layers

    from ssrconv.graph.builder import GroupedConv2D

    rng = np.random.default_rng(groups)
    inp = keras.Input((9, 8, c_in), name="x")
    grouped = GroupedConv2D(c_out, 3, strides=strides, padding=padding, groups=groups)
    model = keras.Model(inp, grouped(inp))
    kernel = rng.normal(size=(3, 3, c_in // groups, c_out)).astype(np.float32)
    bias = rng.normal(size=c_out).astype(np.float32)
    grouped.set_weights([kernel, bias])
    mlmodel = ct.convert(model, source="tensorflow", convert_to="mlprogram",
                         inputs=[ct.TensorType(name="x", shape=(2, 9, 8, c_in))],
                         compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=ct.target.iOS15)
    mlmodel.save(str(tmp_path / "grouped.mlpackage"))
    program = MilProgram.from_mlpackage(tmp_path / "grouped.mlpackage")
    convs = [op for op in program._function.operations if op.op_type == "conv"]
    assert [int(op.groups.val) for op in convs] == [groups]  # one grouped conv, not G convs
    x = rng.normal(size=(2, 9, 8, c_in)).astype(np.float32)
    cg, og = c_in // groups, c_out // groups
    parts = []
    for g in range(groups):
        conv = layers.Conv2D(og, 3, strides=strides, padding=padding)
        conv.build((None, 9, 8, cg))
        conv.set_weights([kernel[..., g * og:(g + 1) * og], bias[g * og:(g + 1) * og]])
        parts.append(np.asarray(conv(x[..., g * cg:(g + 1) * cg])))
    expected = np.concatenate(parts, axis=-1)
    (got,) = program.run({"x": x}).values()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _torch_style_avg_pool(x, k, s, pad, include_pad):
    """Reference loops: PyTorch avg_pool2d(ceil_mode=True) semantics, which MIL follows."""
    n, c, h, w = x.shape
    out_h = -(-(h + 2 * pad - k) // s) + 1
    out_w = -(-(w + 2 * pad - k) // s) + 1
    if (out_h - 1) * s >= h + pad:
        out_h -= 1
    if (out_w - 1) * s >= w + pad:
        out_w -= 1
    y = np.zeros((n, c, out_h, out_w), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            h0, w0 = i * s - pad, j * s - pad
            h1, w1 = min(h0 + k, h + pad), min(w0 + k, w + pad)
            area = (h1 - h0) * (w1 - w0)
            hs, ws = max(h0, 0), max(w0, 0)
            he, we = min(h1, h), min(w1, w)
            window = x[:, :, hs:he, ws:we]
            div = area if include_pad else (he - hs) * (we - ws)
            y[:, :, i, j] = window.sum(axis=(2, 3)) / div
    return y


@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool_ceil_mode_and_padding_count(include_pad):
    """ceil_mode and exclude_padding_from_average come from PyTorch exports, not this one."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 8, 9))],
                opset_version=ct.target.iOS15)
    def prog(x):
        return mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                           pad=[1, 1, 1, 1], ceil_mode=True,
                           exclude_padding_from_average=not include_pad)

    program = MilProgram(prog.functions["main"])
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 9)).astype(np.float32)
    (got,) = program.run({program.input_names[0]: x}).values()
    want = _torch_style_avg_pool(x.astype(np.float64), 3, 2, 1, include_pad)
    assert got.shape == want.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
