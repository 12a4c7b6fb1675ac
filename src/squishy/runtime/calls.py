"""What a composite model (an ensemble, an application) hands the models it calls is checked as the
frontend checks a client's request, so a miswired composite gets a 400 naming the call, not a failed batch."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from squishy.runtime.api import DATATYPES, InvalidRequestError, ModelSpec


def check_call_inputs(spec: ModelSpec, inputs: Mapping[str, np.ndarray], where: str) -> None:
    """The tensors a composite hands a model must be the ones it declares (the caller's error: a 400)."""
    declared = {tensor.name: tensor for tensor in spec.inputs}
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise InvalidRequestError(f"{where}: no tensor for input {missing[0]!r} of model {spec.name!r}")
    for name, array in inputs.items():
        tensor = declared.get(name)
        if tensor is None:
            raise InvalidRequestError(f"{where}: model {spec.name!r} has no input {name!r}")
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is not None and tensor.datatype != "BYTES" and array.dtype != dtype:
            raise InvalidRequestError(f"{where}: input {name!r} is {array.dtype}, the model takes {tensor.datatype}")
        dims = array.shape[1:] if spec.max_batch_size > 0 else array.shape
        if len(dims) != len(tensor.dims) or any(d not in (-1, n) for d, n in zip(tensor.dims, dims, strict=True)):
            raise InvalidRequestError(
                f"{where}: input {name!r} has shape {list(array.shape)}, the model takes {list(tensor.dims)}"
            )
