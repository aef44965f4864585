"""MindSpore's ImageNet GE-ResNet-50 checkpoints (GENet_Res50, model zoo r1.2) -> our GE-ResNet names.

A MindSpore ``.ckpt`` is a proto2 message ``Checkpoint { repeated Value value = 1 }`` with ``Value { required
string tag = 1; TensorProto tensor = 2 }`` and ``TensorProto { repeated int64 dims = 1; required string
tensor_type = 2; required bytes tensor_content = 3 }``: C-order little-endian content, dims [0] for a scalar,
a tensor over 512 MB split into consecutive Values of the same tag. Newer writers may append a CRC trailer
(``crc_num`` + decimal digits), which is removed (not verified), or encrypt the file. The message classes are
built at import from a ``FileDescriptorProto``, so reading needs the ``protobuf`` package alone.

Their network (src/GENet.py, GEBlock.py of model_zoo/research/cv/GENet_Res50) is our GE-ResNet-50 with the
options of configs/pretrain/mindspore/ (docs/pretraining.md); ``convert_genet_checkpoint`` renames its
tensors to ours (``res2.0.ge.gather.1.weight``, ``linear.weight``, ...).
"""
import hashlib
import math
import re

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

__all__ = ["MindSporeCheckpointError", "read_mindspore_checkpoint", "genet_res50_tensors", "convert_genet_checkpoint",
           "genet_variant", "count_values", "sha256_of", "PUBLISHED_GENET_CHECKPOINTS"]

# The three published files: sha256 -> (variant, name on download.mindspore.cn/model_zoo/r1.2/, top-1 / top-5
# as reported by MindSpore on ImageNet val).
PUBLISHED_GENET_CHECKPOINTS = {
    "6b568bebdf808db1bdfd9d013bd45ecd132f5788275d4bd0a4b30884165015bd": (
        "theta_minus", "genetres50_minux_ascend_v120_imagenet2012_research_cv_bs256_top1acc77.75__top5acc93.64",
        "77.75 / 93.64"),
    "44826193cafce1e97018e6b77712ecd077e2d5af4a03b2f3034b9772be80563d": (
        "theta", "genetres50_theta_ascend_v120_imagenet2012_research_cv_bs256_top1acc78.07__top5acc93.93",
        "78.07 / 93.93"),
    "407565a9b390e6daded58219afccc2352ecde06ce4dc4a4b89e3b9ae95030e53": (
        "theta_plus", "genetres50_plus_ascend_v120_imagenet2012_research_cv_bs256_top1acc78.4__top5acc94.14",
        "78.4 / 94.14"),
}

# MindSpore's tensor_type names -> little-endian numpy dtypes.
_DTYPES = {
    "Float16": "<f2", "Float32": "<f4", "Float64": "<f8", "Int8": "i1", "Int16": "<i2", "Int32": "<i4",
    "Int64": "<i8", "UInt8": "u1", "Uint8": "u1", "UInt16": "<u2", "Uint16": "<u2", "UInt32": "<u4",
    "Uint32": "<u4", "UInt64": "<u8", "Uint64": "<u8", "Bool": "?",
}

# Training state that a checkpoint may hold besides the network: ignored.
_OPTIMIZER_TAG = re.compile(r"^(moments\..+|accum\..+|momentum|learning_rate|global_step|scale_sense|epoch_num|"
                            r"step_num|current_iterator_step|last_overflow_iterator_step)$")


class MindSporeCheckpointError(ValueError):
    """A file that is not a readable MindSpore checkpoint of GENet_Res50; the message says why in one line."""


def _checkpoint_class():
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="ge_detectron/mindspore_checkpoint.proto",
                                               package="ge_detectron.mindspore", syntax="proto2")
    tensor = proto.message_type.add(name="TensorProto")
    tensor.field.add(name="dims", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    tensor.field.add(name="tensor_type", number=2, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    tensor.field.add(name="tensor_content", number=3, type=F.TYPE_BYTES, label=F.LABEL_REQUIRED)
    checkpoint = proto.message_type.add(name="Checkpoint")
    value = checkpoint.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    value.field.add(name="tensor", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".ge_detectron.mindspore.TensorProto")
    checkpoint.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                         type_name=".ge_detectron.mindspore.Checkpoint.Value")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ge_detectron.mindspore.Checkpoint"))


Checkpoint = _checkpoint_class()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_checkpoint_start(data):
    """Whether ``data`` starts as a Checkpoint does: field 1 (a Value), whose field 1 is a printable tag."""
    if len(data) < 4 or data[0] != 0x0A:
        return False
    i = 1
    while i < len(data) and data[i] & 0x80:
        i += 1
    if i + 2 >= len(data) or data[i + 1] != 0x0A:
        return False
    length, start = data[i + 2], i + 3
    tag = data[start:start + min(length, 32)]
    return length < 0x80 and len(tag) > 0 and all(32 < b < 127 for b in tag)


def _looks_random(data):
    """High byte entropy (> 7.5 bits per byte over the first 64 KiB): ciphertext, not a protobuf message."""
    sample = data[: 1 << 16]
    if len(sample) < 1024:
        return False
    counts = np.bincount(np.frombuffer(sample, np.uint8), minlength=256) / len(sample)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts)).sum()) > 7.5


def _unreadable(data):
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch .pth?), not a MindSpore checkpoint"
    if _looks_like_checkpoint_start(data):
        return "truncated or corrupt: it starts as a MindSpore checkpoint but does not parse to its end"
    if _looks_random(data):
        return ("encrypted (its bytes look random): MindSpore writes encrypted checkpoints with enc_key, and they "
                "cannot be read without that key; decrypt it with MindSpore (load_checkpoint(..., dec_key=...), then "
                "save_checkpoint without enc_key)")
    return "not a MindSpore checkpoint (not a protobuf Checkpoint message)"


def read_mindspore_checkpoint(path):
    """``{tag: numpy array}`` of a MindSpore ``.ckpt``, in file order (split tensors joined). Raises
    MindSporeCheckpointError (a ValueError) with a one-line reason for a file it cannot read."""
    with open(path, "rb") as f:
        data = f.read()
    trailer = data.rfind(b"crc_num", max(len(data) - 64, 0))
    if trailer >= 0 and data[trailer + len(b"crc_num"):].isdigit():
        data = data[:trailer]
    if not data:
        raise MindSporeCheckpointError(f"{path} is empty: not a MindSpore checkpoint.")
    checkpoint = Checkpoint()
    try:
        checkpoint.ParseFromString(data)
    except (DecodeError, RuntimeError) as e:
        raise MindSporeCheckpointError(f"{path} is {_unreadable(data)} ({type(e).__name__}: {e}).") from None
    if not len(checkpoint.value):
        raise MindSporeCheckpointError(f"{path} is {_unreadable(data)}: it holds no tensors.")
    pieces, heads = {}, {}
    previous = None
    for value in checkpoint.value:
        if not isinstance(value.tag, str):  # protobuf hands a tag that is not UTF-8 over as bytes
            raise MindSporeCheckpointError(f"{path} is truncated or corrupt: the tag {value.tag[:40]!r} is not UTF-8 text.")
        if not value.HasField("tensor"):
            raise MindSporeCheckpointError(f"{path}: {value.tag!r} holds no dense tensor (a MindSpore map tensor?); "
                                           "only dense tensors can be converted.")
        if value.tag in pieces and value.tag != previous:
            raise MindSporeCheckpointError(f"{path}: the tag {value.tag!r} occurs twice, not in consecutive pieces.")
        pieces.setdefault(value.tag, []).append(value.tensor.tensor_content)
        heads.setdefault(value.tag, value.tensor)
        previous = value.tag
    return {tag: _to_array(path, tag, heads[tag], b"".join(parts)) for tag, parts in pieces.items()}


def _to_array(path, tag, tensor, content):
    dtype = _DTYPES.get(tensor.tensor_type)
    if dtype is None:
        raise MindSporeCheckpointError(f"{path}: {tag!r} has tensor_type {tensor.tensor_type!r}, which is not one of "
                                       f"{', '.join(_DTYPES)}.")
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise MindSporeCheckpointError(f"{path}: {tag!r} has negative dims {list(dims)}: truncated or corrupt.")
    itemsize = np.dtype(dtype).itemsize
    if dims == (0,) and len(content) == itemsize:
        dims = ()  # MindSpore writes a scalar with dims [0]
    expected = math.prod(dims) * itemsize
    if len(content) != expected:
        raise MindSporeCheckpointError(f"{path}: {tag!r} has {len(content)} bytes of content for dims {list(dims)} of "
                                       f"{tensor.tensor_type} ({expected} bytes): truncated or corrupt.")
    return np.frombuffer(content, dtype).reshape(dims).astype(np.dtype(dtype).newbyteorder("="))


_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BLOCKS = (3, 4, 6, 3)
_WIDTHS = (256, 512, 1024, 2048)


def genet_res50_tensors(variant):
    """``[(their tag, our name, shape)]`` of every tensor of MindSpore's GENet_Res50 of ``variant``
    ("theta_minus", "theta" or "theta_plus"), in the order of their network."""
    rows = []

    def conv_bn(tag_conv, tag_bn, name, shape):
        rows.append((tag_conv, f"{name}.weight", shape))
        rows.extend((f"{tag_bn}.{k}", f"{name}.norm.{v}", (shape[0],)) for k, v in _BN.items())

    conv_bn("conv1.weight", "bn1", "stem.conv1", (64, 3, 7, 7))
    in_channels = 64
    for stage, (blocks, out) in enumerate(zip(_BLOCKS, _WIDTHS)):
        mid = out // 4
        for i in range(blocks):
            tag, name = f"layer{stage + 1}.{i}", f"res{stage + 2}.{i}"
            conv_bn(f"{tag}.conv1.conv.weight", f"{tag}.conv1.batchnorm", f"{name}.conv1", (mid, in_channels, 1, 1))
            conv_bn(f"{tag}.conv2.conv.weight", f"{tag}.conv2.batchnorm", f"{name}.conv2", (mid, mid, 3, 3))
            conv_bn(f"{tag}.conv3.conv.weight", f"{tag}.conv3.batchnorm", f"{name}.conv3", (out, mid, 1, 1))
            if i == 0:
                conv_bn(f"{tag}.down_layer.conv.weight", f"{tag}.down_layer.batchnorm", f"{name}.shortcut",
                        (out, in_channels, 1, 1))
            if variant in ("theta", "theta_plus"):
                kernel = 224 // 2 ** (stage + 2)
                if kernel > 28:  # res2: a dense 3x3 stride-2 conv first, then the 28x28 depthwise conv
                    conv_bn(f"{tag}.downop.0.weight", f"{tag}.downop.1", f"{name}.ge.gather.1", (out, out, 3, 3))
                    conv_bn(f"{tag}.downop.2.weight", f"{tag}.downop.3", f"{name}.ge.gather.2", (out, 1, 28, 28))
                else:
                    conv_bn(f"{tag}.downop.0.weight", f"{tag}.downop.1", f"{name}.ge.gather.1", (out, 1, kernel, kernel))
            if variant == "theta_plus":
                rows.append((f"{tag}.mlpLayer.0.weight", f"{name}.ge.mlp.0.weight", (out // 16, out, 1, 1)))
                rows.append((f"{tag}.mlpLayer.2.weight", f"{name}.ge.mlp.2.weight", (out, out // 16, 1, 1)))
            in_channels = out
    rows.append(("end_point.weight", "linear.weight", (1000, 2048)))
    rows.append(("end_point.bias", "linear.bias", (1000,)))
    return rows


def genet_variant(tags):
    """The GENet_Res50 variant whose tensors ``tags`` name: "theta_plus" (an excite MLP), "theta" (a
    depthwise gather) or "theta_minus"."""
    if any(".mlpLayer." in t for t in tags):
        return "theta_plus"
    return "theta" if any(".downop." in t for t in tags) else "theta_minus"


def convert_genet_checkpoint(tensors, path="the checkpoint"):
    """``(variant, {our name: float32 array})`` of the ``read_mindspore_checkpoint`` result ``tensors``: every
    network tensor renamed, optimizer state dropped. Raises MindSporeCheckpointError naming unknown, missing
    or misshapen tensors."""
    network = {t: v for t, v in tensors.items() if not _OPTIMIZER_TAG.match(t)}
    variant = genet_variant(network)
    expected = genet_res50_tensors(variant)
    unknown = sorted(set(network) - {tag for tag, _, _ in expected})
    if unknown:
        raise MindSporeCheckpointError(f"{path}: {len(unknown)} tensors are not of MindSpore's GENet_Res50 "
                                       f"({variant}): {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}.")
    for tag, _, shape in expected:
        value = network.get(tag)
        if value is not None and value.shape != shape:
            raise MindSporeCheckpointError(f"{path}: {tag!r} has shape {list(value.shape)}, GENet_Res50 ({variant}) "
                                           f"has {list(shape)} there.")
        if value is not None and value.dtype.kind != "f":
            raise MindSporeCheckpointError(f"{path}: {tag!r} holds {value.dtype}, not floating-point weights.")
    missing = [tag for tag, _, _ in expected if tag not in network]
    if missing:
        raise MindSporeCheckpointError(f"{path}: {len(missing)} tensors of GENet_Res50 ({variant}) are missing: "
                                       f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}.")
    return variant, {name: network[tag].astype(np.float32) for tag, name, _ in expected}


def count_values(weights):
    """``(tensors, values)``: how many arrays ``weights`` holds and their elements in all."""
    return len(weights), sum(int(np.prod(v.shape)) for v in weights.values())


def genet_checkpoint_to_pkl(path):
    """Read and convert the MindSpore GENet_Res50 checkpoint at ``path``. Returns ``(checkpoint, report)``:
    the detectron2 ``.pkl`` content (backbone and ``linear.*`` head, as ``pretrain.convert`` writes) and a
    dict with the file's ``sha256``, ``published`` (a PUBLISHED_GENET_CHECKPOINTS entry or None), ``variant``,
    ``read`` and ``written`` (``count_values`` of the file's network tensors and of the output) and
    ``ignored`` (the optimizer entries' tags)."""
    sha = sha256_of(path)
    tensors = read_mindspore_checkpoint(path)
    variant, weights = convert_genet_checkpoint(tensors, path)
    ignored = [t for t in tensors if _OPTIMIZER_TAG.match(t)]
    network = {t: v for t, v in tensors.items() if t not in ignored}
    checkpoint = {"model": weights, "__author__": f"MindSpore GENet_Res50 ({variant}), sha256 {sha}",
                  "matching_heuristics": True}
    report = {"sha256": sha, "published": PUBLISHED_GENET_CHECKPOINTS.get(sha), "variant": variant,
              "read": count_values(network), "written": count_values(weights), "ignored": ignored}
    return checkpoint, report
