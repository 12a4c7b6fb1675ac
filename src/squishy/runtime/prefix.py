"""Prefix batching at run time: models that share a trunk run it once, batched over all of them.

Many models served together differ only in their last layers (one costly feature extractor, a head per
task). A model's config names the tensor where its trunk ends (``prefix_tensor``); squishy cuts its ONNX
graph there into a *trunk* (the graph's inputs → that tensor) and a *head* (that tensor → the graph's
outputs), and models whose trunks are the same graph with the same weights (``PrefixCut.digest``) form
a prefix group. The scheduler plans the group as one session (``scheduler.demand.prefix_demand``: the
trunk on the summed batch, each head on its slice); its queue holds every member's requests, and a batch
runs the trunk once over all of them, then each member's head on its rows (``PrefixExecutor``).

The cut graphs are written beside the model, in a directory of their own (``prefix-<tensor>/trunk.onnx``
and ``head.onnx``; the trunk's profile is cached there, or given as ``trunk.profile.json``), rewritten only
when their content changes, so that the trunk's profile cache stays valid across starts.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from squishy.batching import Item
from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.profiles import Profile
from squishy.runtime.api import ModelSpec, TensorSpec
from squishy.runtime.executors import Executor

PARAM_PREFIX_TENSOR = "prefix_tensor"  # the tensor where the model's shared trunk ends
PARAM_PREFIX_GROUP = "prefix_group"  # optional: the group's name (default: from the trunk's digest)
TRUNK_VERSION = "prefix"  # a trunk's session id is <group>:prefix, never a model version

# ONNX TensorProto element type → OIP datatype.
_ONNX_DATATYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                   9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}  # fmt: skip


class PrefixError(ValueError):
    """A model's ``prefix_tensor`` cannot be cut; the message says why (the model's UNAVAILABLE reason)."""


@dataclass(frozen=True)
class PrefixCut:
    """One model cut at its ``prefix_tensor``: its trunk and head as ONNX files, and the trunk's digest."""

    model: ModelSpec
    tensor: TensorSpec  # the trunk's output (the head's input), without the batch dimension
    trunk_path: Path
    head_path: Path
    digest: str  # sha256 of the trunk's nodes and weights: equal digests run the same trunk

    @property
    def group_name(self) -> str:
        return self.model.parameters.get(PARAM_PREFIX_GROUP) or f"trunk-{self.digest[:10]}"

    def trunk_spec(self) -> ModelSpec:
        """The trunk as a model of its own: the member's inputs, the cut tensor as its output."""
        return replace(
            self.model,
            name=self.group_name,
            version=TRUNK_VERSION,
            outputs=(self.tensor,),
            model_path=self.trunk_path,
            config=None,
        )

    def head_spec(self) -> ModelSpec:
        """The member's head: the cut tensor in, the member's outputs out."""
        return replace(self.model, inputs=(self.tensor,), model_path=self.head_path, config=None)


def prefix_tensor(spec: ModelSpec) -> str | None:
    return spec.parameters.get(PARAM_PREFIX_TENSOR) or None


def cut_model(spec: ModelSpec) -> PrefixCut:
    """Cut ``spec``'s ONNX graph at its ``prefix_tensor``. Raises PrefixError."""
    import onnx
    import onnx.shape_inference
    import onnx.utils

    tensor = prefix_tensor(spec)
    if tensor is None or spec.model_path is None:
        raise PrefixError(f"model {spec.name!r} names no {PARAM_PREFIX_TENSOR} to cut at")
    if spec.platform != "onnxruntime_onnx" or spec.max_batch_size <= 0:
        raise PrefixError(f"parameter {PARAM_PREFIX_TENSOR}: only batching ONNX models can share a trunk")
    model = onnx.load(str(spec.model_path))
    graph = model.graph
    produced = {name for node in graph.node for name in node.output}
    if tensor not in produced:
        raise PrefixError(f"parameter {PARAM_PREFIX_TENSOR}={tensor!r}: no node of the graph computes such a tensor")
    if tensor in {o.name for o in graph.output}:
        raise PrefixError(f"parameter {PARAM_PREFIX_TENSOR}={tensor!r} is an output of the model: no head is left")
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    try:
        # The extractor finds a cut tensor's type in the graph's value infos: inferred, not stored.
        extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
        trunk = extractor.extract_model(inputs, [tensor])
        head = extractor.extract_model([tensor], outputs)
    except Exception as exc:  # onnx raises plain Exceptions for graphs it cannot split
        where = f"parameter {PARAM_PREFIX_TENSOR}={tensor!r}"
        raise PrefixError(f"{where}: the graph cannot be cut there ({exc})") from None
    # The head must need nothing from before the cut but the cut tensor; the extractor would otherwise
    # pull trunk layers into it (a skip connection across the cut).
    trunk_tensors = {name for node in trunk.graph.node for name in node.output} | set(inputs)
    head_tensors = {name for node in head.graph.node for name in [*node.input, *node.output]}
    crossing = sorted((head_tensors & trunk_tensors) - {tensor})
    if crossing or len(head.graph.input) != 1:
        raise PrefixError(
            f"parameter {PARAM_PREFIX_TENSOR}={tensor!r}: the layers after it also read "
            f"{', '.join(crossing)} from before it, so it does not end a trunk"
        )
    cut_tensor = _tensor_spec(head.graph.input, tensor)
    directory = _writable(spec.model_path.parent / f"prefix-{re.sub(r'[^A-Za-z0-9_.-]', '_', tensor)}")
    trunk_path = _write_if_changed(directory / "trunk.onnx", trunk.SerializeToString(deterministic=True))
    head_path = _write_if_changed(directory / "head.onnx", head.SerializeToString(deterministic=True))
    return PrefixCut(spec, cut_tensor, trunk_path, head_path, _trunk_digest(trunk))


def _tensor_spec(values: Any, name: str) -> TensorSpec:
    for value in values:
        if value.name != name:
            continue
        tensor = value.type.tensor_type
        datatype = _ONNX_DATATYPES.get(tensor.elem_type)
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        if datatype is None or not dims:
            raise PrefixError(f"parameter {PARAM_PREFIX_TENSOR}={name!r}: the tensor has no known type and shape")
        return TensorSpec(name, datatype, dims[1:])  # the leading dimension is the batch
    raise PrefixError(f"parameter {PARAM_PREFIX_TENSOR}={name!r}: the cut left no such input to the head")


def _trunk_digest(trunk: Any) -> str:
    """Two trunks are the same when their nodes and weights are: names and documentation do not count."""
    digest = hashlib.sha256()
    graph = trunk.graph
    for value in graph.input:
        digest.update(value.SerializeToString(deterministic=True))
    for node in graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for initializer in sorted(graph.initializer, key=lambda i: i.name):
        digest.update(initializer.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _writable(directory: Path) -> Path:
    """Beside the model when the repository can be written, else a scratch directory of this process."""
    probe = directory / ".squishy-write-probe"
    try:
        directory.mkdir(exist_ok=True)
        probe.touch()
        probe.unlink()
        return directory
    except OSError:
        return Path(tempfile.mkdtemp(prefix="squishy-prefix-"))


def _write_if_changed(path: Path, content: bytes) -> Path:
    if not path.is_file() or path.read_bytes() != content:
        path.write_bytes(content)
    return path


def group_cuts(cuts: Sequence[PrefixCut]) -> list[list[PrefixCut]]:
    """The prefix groups among ``cuts``: the same trunk digest, group name and input signature; a group
    needs two members at least (a trunk that nobody shares is just the model)."""
    groups: dict[tuple[Any, ...], list[PrefixCut]] = defaultdict(list)
    for cut in cuts:
        signature = (cut.digest, cut.group_name, cut.model.inputs, cut.tensor)
        groups[signature].append(cut)
    return [members for members in groups.values() if len(members) >= 2]


def head_profile(model: Profile, trunk: Profile) -> Profile:
    """A head's ℓ(b) as the scheduler counts it: the whole model's minus the trunk's, at the batch sizes
    both were measured at; what the ``null`` executor sleeps for a head.

    A tiny head measured apart from a large trunk can come out at or below zero (timing noise is larger
    than the head); it is floored at 1% of the model's own latency, and at 1 µs, because a profile's
    latencies must be positive and a head is never free."""
    sizes = [b for b in model.batch_ms if b in trunk.batch_ms] or list(model.batch_ms)
    table = {}
    for b in sizes:
        whole = model.batch_latency_ms(b)
        table[str(b)] = max(whole - trunk.batch_latency_ms(b), whole * 0.01, 1e-3)
    return Profile.from_dict({"model": f"{model.model}/head", "device": model.device, "batch_ms": table})


class PrefixExecutor(Executor):
    """A prefix group's executor on one slot: the trunk's and every member's head (one thread drives
    them all, as any executor). ``run`` runs the trunk alone; ``run_items`` runs a mixed batch."""

    def __init__(
        self,
        spec: ModelSpec,
        trunk: Executor,
        heads: Mapping[str, Executor],
        tensor: str,
        member_of: Callable[[Item], str],
    ) -> None:
        self.spec = spec
        self.trunk = trunk
        self.heads = dict(heads)  # member session id → its head's executor
        self.tensor = tensor
        self.member_of = member_of  # a queued request → its member's session id

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        return self.trunk.run(inputs, [self.tensor])

    def run_items(
        self, items: Sequence[Item], clock: Clock = SYSTEM_CLOCK
    ) -> tuple[list[dict[str, np.ndarray]], tuple[float, float, float]]:
        """Run the trunk once over every item's rows, then each member's head on its own rows. Returns each
        item's outputs and the (input, infer, output) ms. Items whose inputs differ in their non-batch shape
        run the trunk once per shape."""
        requests = [item.payload.request for item in items]
        shapes: dict[Any, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            key = tuple((name, array.shape[1:], array.dtype.str) for name, array in request.inputs.items())
            shapes[key].append(index)
        features: list[np.ndarray | None] = [None] * len(items)
        input_ms = infer_ms = 0.0
        for group in shapes.values():
            t1 = clock.now_ms()
            names = list(requests[group[0]].inputs)
            batch = {
                name: np.concatenate([requests[i].inputs[name] for i in group]) if len(group) > 1
                else requests[group[0]].inputs[name]
                for name in names
            }  # fmt: skip
            t2 = clock.now_ms()
            trunk_out = self.trunk.run(batch, [self.tensor])[self.tensor]
            t3 = clock.now_ms()
            offset = 0
            for i in group:
                rows = requests[i].batch_size
                features[i] = trunk_out[offset : offset + rows]
                offset += rows
            input_ms += t2 - t1
            infer_ms += t3 - t2
        by_member: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            by_member[self.member_of(item)].append(index)
        results: list[dict[str, np.ndarray]] = [{} for _ in items]
        output_ms = 0.0
        for member, indices in by_member.items():
            head = self.heads[member]
            wanted: list[str] = []
            for i in indices:
                for name in requests[i].requested_outputs or [o.name for o in head.spec.outputs]:
                    if name not in wanted:
                        wanted.append(name)
            t4 = clock.now_ms()
            slices = [features[i] for i in indices]
            head_in = slices[0] if len(slices) == 1 else np.concatenate(slices)  # type: ignore[arg-type]
            t5 = clock.now_ms()
            outputs = head.run({self.tensor: head_in}, wanted)
            t6 = clock.now_ms()
            offset = 0
            for i in indices:
                rows = requests[i].batch_size
                selected = requests[i].requested_outputs or wanted
                results[i] = {name: outputs[name][offset : offset + rows] for name in selected}
                offset += rows
            input_ms += t5 - t4
            infer_ms += t6 - t5
            output_ms += clock.now_ms() - t6
        return results, (input_ms, infer_ms, output_ms)

    def cancel(self) -> bool:
        stopped = self.trunk.cancel()
        for head in self.heads.values():
            stopped = head.cancel() and stopped
        return stopped

    def close(self) -> None:
        self.trunk.close()
        for head in self.heads.values():
            head.close()
