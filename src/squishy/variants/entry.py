"""A model-repository entry's ``config.pbtxt``, written for a variant or for the task that lists them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]  # without the batch dimension


def config_text(
    name: str,
    platform: str,
    max_batch_size: int,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    parameters: Mapping[str, str],
) -> str:
    """Triton's text form, with squishy's settings (``slo_ms``, ``accuracy``, ``variants``...) as parameters."""

    def tensors(kind: str, entries: Sequence[Tensor]) -> str:
        rows = [
            f'  {{ name: "{t.name}" data_type: {t.triton_type} dims: [ {", ".join(map(str, t.dims or (1,)))} ] }}'
            for t in entries
        ]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]"

    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        tensors("input", inputs),
        tensors("output", outputs),
    ]
    lines += [f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in parameters.items()]
    return "\n".join(lines) + "\n"
