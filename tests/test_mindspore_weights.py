"""MindSpore's GENet_Res50 checkpoints (issue 23) are converted exactly.

The checkpoints here are synthetic: written by hand in the protobuf wire format the issue describes (not with
the reader's message classes), with the issue's tag list and random tensors of the right shapes. Converted
by ge_detectron.pretrain.mindspore (what tools/convert_weights.py runs) and loaded by detectron2's
DetectionCheckpointer into ``build_ge_classifier(configs/pretrain/mindspore/r50_<variant>.yaml)``, the logits
must equal those of a float64 implementation of their network written below from the issue's description
(explicit F.pad padding, the BN formula written out).
"""
import math
import os
import pickle
import struct
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from ge_detectron import build_ge_classifier
from ge_detectron.checkpoint import load_weights
from ge_detectron.config import get_ge_cfg
from ge_detectron.layers.same_padding import same_padding
from ge_detectron.pretrain import get_pretrain_cfg
from ge_detectron.cli.convert_weights import run_convert_weights
from ge_detectron.pretrain.mindspore import (MindSporeCheckpointError, convert_genet_checkpoint,
                                             genet_checkpoint_to_pkl, read_mindspore_checkpoint)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["theta_minus", "theta", "theta_plus"]
# The issue's counts: values (BN statistics included) and tensors of each published checkpoint.
ISSUE_COUNTS = {"theta_minus": (25_610_152, 267), "theta": (31_156_136, 362), "theta_plus": (33_671_080, 394)}
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


# ---- the protobuf wire format, by hand ----------------------------------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def tensor_proto(dims, tensor_type, content):  # TensorProto: dims = 1 (unpacked varints), type = 2, content = 3
    return b"".join(varint(1 << 3) + varint(d) for d in dims) + length_delimited(2, tensor_type.encode()) + \
        length_delimited(3, content)


def value_proto(tag, tensor):  # Checkpoint.Value: tag = 1, tensor = 2
    return length_delimited(1, tag.encode()) + length_delimited(2, tensor)


def checkpoint_bytes(entries):
    """``entries``: (tag, dims, tensor_type, content) -> the bytes of ``Checkpoint { repeated Value value = 1 }``."""
    return b"".join(length_delimited(1, value_proto(tag, tensor_proto(dims, ttype, content)))
                    for tag, dims, ttype, content in entries)


# ---- their tags and shapes, from the issue ----------------------------------------------------------------------
def their_tensors(variant):
    """{tag: shape} of GENet_Res50 as the issue lists the checkpoint's tags."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    bn = lambda prefix, c: {f"{prefix}.{k}": (c,) for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    shapes.update(bn("bn1", 64))
    cin = 64
    for layer, (blocks, cout, side) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048), (56, 28, 14, 7)), 1):
        mid = cout // 4
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            for j, shape in ((1, (mid, cin, 1, 1)), (2, (mid, mid, 3, 3)), (3, (cout, mid, 1, 1))):
                shapes[f"{p}.conv{j}.conv.weight"] = shape
                shapes.update(bn(f"{p}.conv{j}.batchnorm", shape[0]))
            if i == 0:
                shapes[f"{p}.down_layer.conv.weight"] = (cout, cin, 1, 1)
                shapes.update(bn(f"{p}.down_layer.batchnorm", cout))
            if variant != "theta_minus" and layer == 1:
                shapes[f"{p}.downop.0.weight"] = (cout, cout, 3, 3)
                shapes.update(bn(f"{p}.downop.1", cout))
                shapes[f"{p}.downop.2.weight"] = (cout, 1, 28, 28)
                shapes.update(bn(f"{p}.downop.3", cout))
            elif variant != "theta_minus":
                shapes[f"{p}.downop.0.weight"] = (cout, 1, side, side)
                shapes.update(bn(f"{p}.downop.1", cout))
            if variant == "theta_plus":
                shapes[f"{p}.mlpLayer.0.weight"] = (cout // 16, cout, 1, 1)
                shapes[f"{p}.mlpLayer.2.weight"] = (cout, cout // 16, 1, 1)
            cin = cout
    shapes["end_point.weight"], shapes["end_point.bias"] = (1000, 2048), (1000,)
    return shapes


def random_weights(variant, seed):
    """Random float32 tensors of their shapes, scaled so that activations stay of order one through the net."""
    rng = np.random.default_rng(seed)
    weights = {}
    for tag, shape in their_tensors(variant).items():
        if tag.startswith("bn1."):  # a small variance, so that the stem's eps (1e-4, not 1e-5) matters
            value = rng.uniform(0.001, 0.01, shape) if tag.endswith("variance") else rng.uniform(0.05, 0.1, shape)
        elif tag.endswith("gamma"):
            value = rng.uniform(0.5, 1.0, shape) * (0.3 if ".conv3." in tag else 1.0)
        elif tag.endswith(("beta", "moving_mean")):
            value = rng.normal(0, 0.1, shape)
        elif tag.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif tag == "end_point.bias":
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, math.sqrt(2.0 / fan_in), shape)
        weights[tag] = value.astype(np.float32)
    return weights


def write_checkpoint(path, weights, extras=True):
    """The checkpoint file of ``weights``. With ``extras``: the features of real files the reader must handle:
    a Float16 tensor, a tensor split into three consecutive Values, optimizer entries (scalars with dims [0])
    and a CRC trailer. Returns the weights as stored (the Float16 one rounded)."""
    stored, entries = dict(weights), []
    for tag, value in weights.items():
        if extras and tag == "end_point.weight":
            stored[tag] = value.astype(np.float16).astype(np.float32)
            entries.append((tag, value.shape, "Float16", value.astype("<f2").tobytes()))
        elif extras and tag == "layer4.0.conv2.conv.weight":
            content = value.astype("<f4").tobytes()
            cuts = [0, len(content) // 3 // 4 * 4, 2 * len(content) // 3 // 4 * 4, len(content)]
            entries.extend((tag, value.shape, "Float32", content[a:b]) for a, b in zip(cuts, cuts[1:]))
        else:
            entries.append((tag, value.shape, "Float32", value.astype("<f4").tobytes()))
    if extras:
        entries.append(("moments.conv1.weight", (64, 3, 7, 7), "Float32", np.zeros(64 * 3 * 49, "<f4").tobytes()))
        entries.append(("learning_rate", (0,), "Float32", struct.pack("<f", 0.1)))
        entries.append(("momentum", (0,), "Float32", struct.pack("<f", 0.9)))
        entries.append(("global_step", (0,), "Int32", struct.pack("<i", 500500)))
    with open(path, "wb") as f:
        f.write(checkpoint_bytes(entries) + (b"crc_num3735928559" if extras else b""))
    return stored


# ---- their network in float64, from the issue --------------------------------------------------------------------
def pad_same(x, k, s, value=0.0):
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad order: width, then height
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def conv_same(x, w, s=1):
    return F.conv2d(pad_same(x, w.shape[-1], s), w, stride=s)


def bn(x, w, prefix, eps=1e-5):
    shape = (1, -1, 1, 1)
    return (x - w[f"{prefix}.moving_mean"].view(shape)) / torch.sqrt(w[f"{prefix}.moving_variance"].view(shape) + eps) \
        * w[f"{prefix}.gamma"].view(shape) + w[f"{prefix}.beta"].view(shape)


def their_logits(w, images, variant):
    """GENet_Res50 of the issue on (N, 3, 224, 224) RGB 0-255 images; ``w``: {tag: float64 tensor}."""
    x = (images - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    x = F.relu(bn(conv_same(x, w["conv1.weight"], 2), w, "bn1", eps=1e-4))
    x = F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)
    for layer, blocks in enumerate((3, 4, 6, 3), 1):
        for i in range(blocks):
            p, s = f"layer{layer}.{i}", 2 if i == 0 and layer > 1 else 1
            out = F.relu(bn(conv_same(x, w[f"{p}.conv1.conv.weight"]), w, f"{p}.conv1.batchnorm"))
            out = F.relu(bn(conv_same(out, w[f"{p}.conv2.conv.weight"], s), w, f"{p}.conv2.batchnorm"))
            out = bn(conv_same(out, w[f"{p}.conv3.conv.weight"]), w, f"{p}.conv3.batchnorm")
            shortcut = x
            if i == 0:
                shortcut = bn(conv_same(x, w[f"{p}.down_layer.conv.weight"], s), w, f"{p}.down_layer.batchnorm")
            if variant == "theta_minus":
                gate = out.mean(dim=(2, 3), keepdim=True)
            elif layer == 1:
                g = bn(conv_same(out, w[f"{p}.downop.0.weight"], 2), w, f"{p}.downop.1")
                gate = bn(F.conv2d(g, w[f"{p}.downop.2.weight"], groups=g.shape[1]), w, f"{p}.downop.3")
            else:
                gate = bn(F.conv2d(out, w[f"{p}.downop.0.weight"], groups=out.shape[1]), w, f"{p}.downop.1")
            if variant == "theta_plus":
                gate = F.conv2d(F.relu(F.conv2d(gate, w[f"{p}.mlpLayer.0.weight"])), w[f"{p}.mlpLayer.2.weight"])
            assert gate.shape == (x.shape[0], out.shape[1], 1, 1)
            x = F.relu(out * torch.sigmoid(gate) + shortcut)
    return F.linear(x.mean(dim=(2, 3)), w["end_point.weight"], w["end_point.bias"])


# ---- the tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,kernel,stride,expected", [(224, 7, 2, (2, 3)), (112, 3, 2, (0, 1)), (56, 3, 1, (1, 1)),
                                                         (56, 1, 2, (0, 0)), (7, 3, 2, (1, 1)), (28, 28, 1, (13, 14))])
def test_same_padding_amounts(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected  # the issue's rule, worked by hand


@pytest.mark.parametrize("variant", VARIANTS)
def test_issue_tag_list_has_the_published_counts(variant):
    shapes = their_tensors(variant)
    assert (sum(math.prod(s) for s in shapes.values()), len(shapes)) == ISSUE_COUNTS[variant]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(variant)``: (weights as stored in the synthetic checkpoint, converted .pkl path, its content,
    the converter's report). The last variant's are kept for the next test (about 0.3 GB each)."""
    cache = {}

    def convert(variant):
        if variant not in cache:
            cache.clear()
            folder = tmp_path_factory.mktemp(variant)
            ckpt, pkl = folder / f"genet_{variant}.ckpt", folder / f"genet_{variant}.pkl"
            stored = write_checkpoint(ckpt, random_weights(variant, seed=VARIANTS.index(variant)))
            checkpoint, report = genet_checkpoint_to_pkl(str(ckpt))
            with open(pkl, "wb") as f:
                pickle.dump(checkpoint, f)
            cache[variant] = stored, str(pkl), checkpoint, report
        return cache[variant]
    return convert


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_checkpoint_reproduces_their_logits(variant, converted):
    torch.manual_seed(0)
    stored, pkl, checkpoint, report = converted(variant)
    assert report["variant"] == variant and report["published"] is None
    assert report["read"] == report["written"] == ISSUE_COUNTS[variant][::-1]
    assert set(report["ignored"]) == {"global_step", "learning_rate", "momentum", "moments.conv1.weight"}

    cfg = get_pretrain_cfg(os.path.join(REPO, f"configs/pretrain/mindspore/r50_{variant}.yaml"),
                           ["MODEL.WEIGHTS", pkl, "MODEL.GE.FUSED", "off"])
    model = build_ge_classifier(cfg).eval()
    DetectionCheckpointer(model).load(pkl)
    # Ours after conversion against theirs: every tensor landed, and the model holds exactly as many.
    state = {k: v for k, v in model.resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert (len(state), sum(v.numel() for v in state.values())) == ISSUE_COUNTS[variant][::-1]
    for name, value in checkpoint["model"].items():
        torch.testing.assert_close(state[name], torch.from_numpy(value), rtol=0, atol=0)

    images = torch.rand(1, 3, 224, 224, dtype=torch.float64) * 255
    weights = {tag: torch.from_numpy(v).double() for tag, v in stored.items()}
    with torch.no_grad():
        ours = model(images.float()).double()
        theirs = their_logits(weights, images, variant)
    difference = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    print(f"{variant}: largest logit difference {difference:.3g} (largest logit {scale:.3g})")
    assert theirs.std() > 0.1 * scale  # the logits differ between classes: the comparison means something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * max(scale, 1.0))


def test_detector_configs_take_every_backbone_tensor_and_leave_the_head(converted):
    """The YAML and LazyConfig detectors start from the converted file: every backbone and res5 tensor is in
    it, the classifier head is the only thing they do not use."""
    _, pkl, checkpoint, _ = converted("theta_plus")
    cfg = get_ge_cfg(os.path.join(REPO, "configs/faster_rcnn_ge_theta_plus_global_r50_mindspore.yaml"),
                     ["MODEL.WEIGHTS", pkl, "MODEL.DEVICE", "cpu"])
    lazy = LazyConfig.load(os.path.join(REPO, "configs/faster_rcnn_ge_theta_plus_global_r50_mindspore.py"))
    models = {"yaml": build_model(cfg), "lazy": instantiate(lazy.model)}
    shapes = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in models.items()}
    assert shapes["yaml"] == shapes["lazy"]
    for name, model in models.items():
        incompatible = load_weights(model, pkl)
        backbone = [k for k in incompatible.missing_keys if k.startswith(("backbone.", "roi_heads.res5"))]
        assert not backbone and not incompatible.incorrect_shapes, name
        assert sorted(incompatible.unexpected_keys) == ["linear.bias", "linear.weight"], name
        stem = model.backbone.stem
        assert stem.conv1.norm.eps == 1e-4 and type(stem).__name__ == "SamePaddingStem"
        torch.testing.assert_close(model.roi_heads.res5[0].ge.mlp[0].weight,
                                   torch.from_numpy(checkpoint["model"]["res5.0.ge.mlp.0.weight"]), rtol=0, atol=0)


@pytest.fixture
def small(tmp_path):
    """Write a small checkpoint of ``(tag, dims, type, content)`` entries; return its path."""
    def write(entries, trailer=b""):
        path = tmp_path / "small.ckpt"
        path.write_bytes(checkpoint_bytes(entries) + trailer)
        return str(path)
    return write


def test_reader_joins_split_tensors_reads_scalars_dtypes_and_a_crc_trailer(small):
    half = np.arange(6, dtype="<f2")
    path = small([("a", (2, 3), "Float32", np.arange(3, dtype="<f4").tobytes()),
                  ("a", (2, 3), "Float32", np.arange(3, 6, dtype="<f4").tobytes()),
                  ("h", (6,), "Float16", half.tobytes()), ("s", (0,), "Int32", struct.pack("<i", -7)),
                  ("u", (2,), "UInt8", bytes([1, 255])), ("v", (1,), "Uint8", bytes([9]))], trailer=b"crc_num42")
    tensors = read_mindspore_checkpoint(path)
    np.testing.assert_array_equal(tensors["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert tensors["h"].dtype == np.float16 and tensors["s"].shape == () and tensors["s"] == -7
    assert tensors["u"].tolist() == [1, 255] and tensors["v"].tolist() == [9]


def one_line_error(call, match):
    with pytest.raises(MindSporeCheckpointError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_truncated_file(small, tmp_path):
    path = small([("conv1.weight", (64, 3, 7, 7), "Float32", np.zeros(64 * 147, "<f4").tobytes())])
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    one_line_error(lambda: read_mindspore_checkpoint(path), r"small.ckpt is truncated or corrupt")


def test_unknown_tags(small):
    path = small([("conv1.weight", (64, 3, 7, 7), "Float32", np.zeros(64 * 147, "<f4").tobytes()),
                  ("head.fc.weight", (2,), "Float32", np.zeros(2, "<f4").tobytes())])
    one_line_error(lambda: convert_genet_checkpoint(read_mindspore_checkpoint(path), path),
                   r"1 tensors are not of MindSpore's GENet_Res50 \(theta_minus\): head.fc.weight")


def test_missing_tensors(small):
    path = small([("conv1.weight", (64, 3, 7, 7), "Float32", np.zeros(64 * 147, "<f4").tobytes())])
    one_line_error(lambda: convert_genet_checkpoint(read_mindspore_checkpoint(path), path),
                   r"266 tensors of GENet_Res50 \(theta_minus\) are missing: bn1.gamma")


def test_wrong_shape(small):
    path = small([("conv1.weight", (64, 3, 3, 3), "Float32", np.zeros(64 * 27, "<f4").tobytes())])
    one_line_error(lambda: convert_genet_checkpoint(read_mindspore_checkpoint(path), path),
                   r"'conv1.weight' has shape \[64, 3, 3, 3\], GENet_Res50 \(theta_minus\) has \[64, 3, 7, 7\]")


def test_content_size_disagrees_with_dims(small):
    path = small([("conv1.weight", (64, 3, 7, 7), "Float32", np.zeros(100, "<f4").tobytes())])
    one_line_error(lambda: read_mindspore_checkpoint(path), r"'conv1.weight' has 400 bytes of content for dims")


def test_encrypted_file(tmp_path):
    path = tmp_path / "encrypted.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 14, dtype=np.uint8).tobytes())
    one_line_error(lambda: read_mindspore_checkpoint(str(path)), r"is encrypted .*enc_key")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(b"model: resnet50\nepochs: 90\n" * 20)
    one_line_error(lambda: read_mindspore_checkpoint(str(path)), r"notes.ckpt is not a MindSpore checkpoint")
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.ckpt")
    one_line_error(lambda: read_mindspore_checkpoint(str(tmp_path / "model.ckpt")), r"a zip archive .*PyTorch")


def test_tool_reports_a_bad_file_in_one_line(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit, match=r"^convert_weights.py: error: cannot convert .*bad.ckpt.*: .*not a "
                                         r"MindSpore checkpoint") as error:
        run_convert_weights([str(path), str(tmp_path / "out.pkl")])
    assert "\n" not in str(error.value.code)
    assert not (tmp_path / "out.pkl").exists()

# ---- the reader under fuzzing -----------------------------------------------------------------------------------
def int64_varint(n):  # a protobuf int64: negative values as their 64-bit two's complement
    return varint(n & (2 ** 64 - 1))


def claimed_tensor(dims, tensor_type, content):
    """A Checkpoint of one tensor whose dims (any int64) claim what they like, whatever the content's size."""
    tensor = b"".join(varint(1 << 3) + int64_varint(d) for d in dims) + length_delimited(2, tensor_type.encode()) + \
        length_delimited(3, content)
    return length_delimited(1, value_proto("conv1.weight", tensor))


FUZZ_SEED = checkpoint_bytes([("conv1.weight", (2, 3), "Float32", np.arange(3, dtype="<f4").tobytes()),
                              ("conv1.weight", (2, 3), "Float32", np.arange(3, 6, dtype="<f4").tobytes()),
                              ("bn1.gamma", (0,), "Float32", struct.pack("<f", 1.0)),
                              ("global_step", (1,), "Int32", struct.pack("<i", 5))]) + b"crc_num123"


def flipped(data, flips):
    data = bytearray(data)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    return bytes(data)


FUZZED_FILES = st.one_of(
    st.integers(0, len(FUZZ_SEED) - 1).map(lambda n: FUZZ_SEED[:n]),  # truncations
    st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda flips: flipped(FUZZ_SEED, flips)),  # bit flips
    st.binary(max_size=4096),  # random bytes
    st.builds(claimed_tensor, st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=5),
              st.sampled_from(["Float32", "Float16", "Int64", "Bool", "Complex64"]), st.binary(max_size=64)),
    st.builds(lambda field, size, payload: varint(field << 3 | 2) + varint(size) + payload,  # a huge claimed length
              st.integers(1, 3), st.integers(2 ** 20, 2 ** 63 - 1), st.binary(max_size=64)),
)


@settings(max_examples=300, deadline=timedelta(seconds=60), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=FUZZED_FILES)
def test_the_ckpt_reader_under_fuzzing_returns_tensors_or_one_line_error_in_bounded_memory(data, tmp_path_factory):
    """Truncations, bit flips, random bytes, dims or lengths that claim up to 2**63: the reader and the conversion
    either read the file or raise MindSporeCheckpointError with one line, and never allocate more than a small
    multiple of the file's size (numpy's and Python's allocations, traced)."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.ckpt"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        genet_checkpoint_to_pkl(str(path))
    except MindSporeCheckpointError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 * len(data) + 4 * 2 ** 20  # sha256_of reads 1 MiB blocks
