"""Check an ONNX file before onnxruntime opens it: no control flow, sizes within the budget, finite weights.

A model file is input like any other: a graph can declare a 40000x40000
constant, loop 10^15 times, or carry NaN weights, and onnxruntime would
allocate, spin or silently compute garbage. :func:`check_model_file` reads the
file's protobuf directly (a small reader of the wire format for the few
``ModelProto`` fields it needs: no ``onnx`` package, which only the ``[train]``
extra installs) and refuses, with one line naming the file:

- control flow (``Loop``, ``Scan``, ``If``, ``SequenceMap``, or any node with
  a subgraph attribute): ``trm export`` never writes it (a U-Net is a fixed
  chain of Conv, ConvTranspose, MaxPool, Relu, Concat, normalisation and the
  quantisation operators), and a loop's trip count is unbounded;
- a tensor the file declares (initializer, ``Constant``, or the output of
  ``ConstantOfShape`` / ``Expand`` with a constant shape) that exceeds the
  memory budget (:func:`trmcore.limits.check_allocation`);
- floating-point weights holding NaN or infinite values.

What the graph computes at run time is bounded by onnxruntime's arena limit
and the per-volume time limit (:mod:`trmcore.infer.runtime`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from trmcore.limits import check_allocation, format_size, product, shape_text

#: Operators that carry subgraphs (loops and branches): never in a trmcore export.
CONTROL_FLOW = ("Loop", "Scan", "If", "SequenceMap")
#: ONNX TensorProto data types: element size in bytes (strings and unknown types count 1 byte).
ELEMENT_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
                17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
# Floating types whose values are checked for NaN/inf, as little-endian NumPy dtypes.
_FLOAT_DTYPES = {1: "<f4", 10: "<f2", 11: "<f8"}
# Nested messages deeper than this are refused (a graph nests subgraphs only through control flow).
_MAX_DEPTH = 8

# Field numbers of onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, FunctionProto).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTRIBUTE = 1, 2, 4, 5
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 1, 5, 6, 10, 11, 22, 23
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_FLOATS, _TENSOR_INT32, _TENSOR_INT64, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 4, 5, 7, 8, 9
_TENSOR_DOUBLES = 10
_SPARSE_VALUES, _SPARSE_DIMS = 1, 3
_FUNCTION_NODE = 7


class _Malformed(Exception):
    pass


@dataclass
class _Tensor:
    name: str = ""
    dims: List[int] = field(default_factory=list)
    data_type: int = 0
    raw: Optional[memoryview] = None
    floats: List[memoryview] = field(default_factory=list)  # packed float/double data blocks
    int64: List[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return product(self.dims) * ELEMENT_SIZE.get(self.data_type, 1)

    def values(self) -> Optional[np.ndarray]:
        """The int64 values of a small integer tensor (a shape), or None."""
        if self.data_type != 7:
            return None
        if self.raw is not None and len(self.raw) <= 8 * 64:
            return np.frombuffer(self.raw, "<i8")
        if self.int64 and len(self.int64) <= 64:
            return np.asarray(self.int64, np.int64)
        return None

    def nonfinite(self) -> bool:
        dtype = _FLOAT_DTYPES.get(self.data_type)
        if dtype is None:
            return False
        blocks = ([self.raw] if self.raw is not None else []) + self.floats
        if self.data_type == 10 and self.raw is None:
            return False  # float16 stored in int32_data: rare, checked at run time (finite logits)
        for block in blocks:
            size = np.dtype(dtype).itemsize
            usable = len(block) - len(block) % size
            if usable and not np.isfinite(np.frombuffer(block[:usable], dtype)).all():
                return True
        return False


@dataclass
class _Node:
    op_type: str = ""
    inputs: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    subgraph: bool = False
    tensors: List[_Tensor] = field(default_factory=list)  # tensor-valued attributes (Constant's value ...)


def check_model_file(path, limit: Optional[int] = None) -> None:
    """ValueError naming ``path`` when the model has control flow, declares tensors beyond the memory
    budget (:class:`trmcore.limits.ResourceLimitError`) or holds non-finite weights.

    A file that is not a protobuf is left to onnxruntime (which names it) unless it is larger than the budget.
    """
    size = os.path.getsize(path)
    # onnxruntime holds the file and its own copy of the weights while it builds the session.
    check_allocation(2 * size, f"the model file ({format_size(size)}) and onnxruntime's copy of its weights", path,
                     limit)
    with open(path, "rb") as handle:
        data = memoryview(handle.read())
    try:
        nodes, tensors = _read_model(data)
    except _Malformed:
        return  # onnxruntime reports a damaged file in its own words (create_session names the file)
    flow = sorted({n.op_type for n in nodes if n.op_type in CONTROL_FLOW or n.subgraph})
    if flow:
        raise ValueError(f"{path}: the graph has control flow ({', '.join(flow)}), which `trm export` never "
                         "writes and whose run time has no bound: refused")
    constants: Dict[str, _Tensor] = {t.name: t for t in tensors if t.name}
    for node in nodes:
        for tensor in node.tensors:
            for name in node.outputs[:1]:
                constants.setdefault(name, tensor)
    declared = sum(t.nbytes for t in tensors) + sum(t.nbytes for n in nodes for t in n.tensors)
    check_allocation(declared, "the weights and constants the graph declares", path, limit)
    for tensor in tensors + [t for n in nodes for t in n.tensors]:
        check_allocation(tensor.nbytes, f"tensor {tensor.name or '(unnamed)'} of shape {shape_text(tensor.dims)}",
                         path, limit)
        if tensor.nonfinite():
            raise ValueError(f"{path}: weight tensor {tensor.name or '(unnamed)'} holds NaN or infinite values: "
                             "the model's outputs would be meaningless (a diverged or damaged model)")
    for node in nodes:
        _check_shaped_output(node, constants, path, limit)


def _check_shaped_output(node: _Node, constants: Dict[str, _Tensor], path, limit: Optional[int]) -> None:
    """ConstantOfShape / Expand with a constant shape: the output size is known before running."""
    if node.op_type == "ConstantOfShape" and node.inputs:
        shape_input, itemsize = node.inputs[0], 4
        if node.tensors:
            itemsize = ELEMENT_SIZE.get(node.tensors[0].data_type, 4)
    elif node.op_type == "Expand" and len(node.inputs) > 1:
        shape_input, itemsize = node.inputs[1], 1
    else:
        return
    tensor = constants.get(shape_input)
    values = None if tensor is None else tensor.values()
    if values is None:
        return
    if (values < 0).any():
        raise ValueError(f"{path}: {node.op_type} asks for a tensor of negative shape {values.tolist()}")
    check_allocation(product(values.tolist()) * itemsize,
                     f"{node.op_type} builds a tensor of shape {shape_text(values.tolist())}, which", path, limit)


# -- protobuf wire format ---------------------------------------------------------------------------


def _varint(data: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed()
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, int value or memoryview payload) of each field of one message."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise _Malformed()
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise _Malformed()
        if pos > end:
            raise _Malformed()
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(data: memoryview) -> List[int]:
    out, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        out.append(_signed(value))
    return out


def _read_model(data: memoryview) -> Tuple[List[_Node], List[_Tensor]]:
    nodes: List[_Node] = []
    tensors: List[_Tensor] = []
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == _MODEL_GRAPH:
            _read_graph(value, nodes, tensors, 0)
        elif number == _MODEL_FUNCTIONS:
            for fnumber, fwire, fvalue in _fields(value):
                if fnumber == _FUNCTION_NODE and fwire == 2:
                    nodes.append(_read_node(fvalue, nodes, tensors, 1))
    return nodes, tensors


def _read_graph(data: memoryview, nodes: List[_Node], tensors: List[_Tensor], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _Malformed()
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            nodes.append(_read_node(value, nodes, tensors, depth))
        elif number == _GRAPH_INITIALIZER:
            tensors.append(_read_tensor(value))
        elif number == _GRAPH_SPARSE:
            tensors.append(_read_sparse(value))


def _read_node(data: memoryview, nodes: List[_Node], tensors: List[_Tensor], depth: int) -> _Node:
    node = _Node()
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == _NODE_OP:
            node.op_type = bytes(value).decode("utf-8", "replace")
        elif number == _NODE_INPUT:
            node.inputs.append(bytes(value).decode("utf-8", "replace"))
        elif number == _NODE_OUTPUT:
            node.outputs.append(bytes(value).decode("utf-8", "replace"))
        elif number == _NODE_ATTRIBUTE:
            for anumber, awire, avalue in _fields(value):
                if awire != 2:
                    continue
                if anumber in (_ATTR_G, _ATTR_GRAPHS):
                    node.subgraph = True
                    _read_graph(avalue, nodes, tensors, depth + 1)  # its nodes are checked too
                elif anumber in (_ATTR_T, _ATTR_TENSORS):
                    node.tensors.append(_read_tensor(avalue))
                elif anumber in (_ATTR_SPARSE, _ATTR_SPARSES):
                    node.tensors.append(_read_sparse(avalue))
    return node


def _read_tensor(data: memoryview) -> _Tensor:
    tensor = _Tensor()
    for number, wire, value in _fields(data):
        if number == _TENSOR_DIMS:
            if wire == 2:
                tensor.dims.extend(_packed_varints(value))
            elif wire == 0:
                tensor.dims.append(_signed(value))
        elif number == _TENSOR_TYPE and wire == 0:
            tensor.data_type = int(value)
        elif number == _TENSOR_NAME and wire == 2:
            tensor.name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_RAW and wire == 2:
            tensor.raw = value
        elif number in (_TENSOR_FLOATS, _TENSOR_DOUBLES) and wire in (1, 2, 5):
            tensor.floats.append(value)
        elif number == _TENSOR_INT64:
            if wire == 2:
                tensor.int64.extend(_packed_varints(value))
            elif wire == 0:
                tensor.int64.append(_signed(value))
    if any(d < 0 for d in tensor.dims):
        raise _Malformed()
    return tensor


def _read_sparse(data: memoryview) -> _Tensor:
    """A sparse tensor counts as dense: onnxruntime densifies sparse initializers."""
    values, dims = _Tensor(), []
    for number, wire, value in _fields(data):
        if number == _SPARSE_VALUES and wire == 2:
            values = _read_tensor(value)
        elif number == _SPARSE_DIMS:
            dims.extend(_packed_varints(value) if wire == 2 else [_signed(value)] if wire == 0 else [])
    values.dims = dims or values.dims
    return values


__all__ = ["CONTROL_FLOW", "check_model_file"]
