"""The Open Inference Protocol (KServe V2, REST) bodies, and the decoder that turns an infer
request into rows of features for the served model.

The models are hand-written from the specification (kserve/open-inference-protocol,
`specification/protocol/inference_rest.md`), not imported: no maintained package fits.
mlserver's `mlserver.types` pins fastapi < 0.116 (it would downgrade fastapi and starlette
to versions with known CVEs) and imports its whole server; kserve's
`v2_datamodels` brings ~290 MB (grpc, kubernetes, pandas); open-inference-openapi is
pydantic v1, which FastAPI refuses. All of them also accept NaN, strings in FP32 tensors and
element counts that do not match the shape. Only the REST JSON types are here; of the binary
tensor extension, binary *input* is decoded (tritonclient sends it by default) and outputs
are always JSON, which the protocol allows.

`InferDecoder` is built from the manifest, like the /predict schemas: one input of shape
[N, features], FP32 or FP64, flat or nested row-major `data` or binary bytes, every value
finite and within its feature's bounds. Its messages name positions and the manifest's
features, never what the client sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from service.ml.manifest import ModelManifest
from service.ml.predictor import FloatArray

# The spec's tensor datatypes; this model takes FP32 or FP64.
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[Annotated[str, Field(max_length=128)], ParameterValue]
# Tensor data: numbers, flat or nested in row-major order.
TensorData = Annotated[
    list[Any],
    Field(
        json_schema_extra={"items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]}}
    ),
]

LABEL = "label"
PROBABILITIES = "probabilities"
OUTPUTS = (LABEL, PROBABILITIES)
INPUT_NAME = "input-0"
_DTYPES: dict[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP64": np.float64}
_NUMBER_TYPES = (int, float)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RequestInput(_Request):
    """`$request_input`: `data`, or (binary tensor extension) `parameters.binary_data_size`
    bytes after the JSON header."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=16)
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData | None = None


class RequestOutput(_Request):
    """`$request_output`: which output to answer (`parameters`, e.g. `binary_data`, are
    accepted and outputs are always JSON)."""

    name: str = Field(min_length=1, max_length=256)
    parameters: Parameters | None = None


class InferenceRequest(_Request):
    """`$inference_request`."""

    id: str | None = Field(default=None, max_length=256)
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=16)


class _Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


class ResponseOutput(_Response):
    """`$response_output`, with flat row-major `data`."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[float]


class InferenceResponse(_Response):
    """`$inference_response`."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Response):
    """`$metadata_tensor`: -1 is a dimension of any size."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(_Response):
    """`$metadata_model_response`."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(_Response):
    """`$metadata_server_response`."""

    name: str
    version: str
    extensions: list[str]


class ServerLive(_Response):
    live: bool


class ServerReady(_Response):
    # The spec's text says `live` here, a known typo: servers (and KServe) answer `ready`.
    ready: bool


class ModelReady(_Response):
    name: str
    ready: bool


class V2Error(_Response):
    """`$inference_error_response` (and every other V2 error): tritonclient raises with it."""

    error: str


def model_metadata(manifest: ModelManifest) -> ModelMetadata:
    """The served model's V2 metadata: shapes from the manifest's features and classes."""
    return ModelMetadata(
        name=manifest.name,
        versions=[manifest.version],
        platform="sklearn",
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="FP64", shape=[-1, manifest.n_features])],
        outputs=[
            MetadataTensor(name=LABEL, datatype="INT64", shape=[-1]),
            MetadataTensor(
                name=PROBABILITIES, datatype="FP64", shape=[-1, len(manifest.class_names)]
            ),
        ],
    )


def infer_example(manifest: ModelManifest, row: list[float]) -> dict[str, Any]:
    """An infer request body for the OpenAPI examples: one row, FP32."""
    return {
        "inputs": [
            {"name": INPUT_NAME, "shape": [1, manifest.n_features], "datatype": "FP32", "data": row}
        ]
    }


class TensorError(ValueError):
    """An infer request this model cannot take: answered 400 with the message."""


@dataclass(frozen=True, slots=True)
class Decoded:
    rows: FloatArray
    outputs: tuple[str, ...]
    id: str | None


class InferDecoder:
    """An infer request body (JSON, or JSON + binary tensor data) -> validated rows."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.n_features = manifest.n_features
        self.features = manifest.features
        self.low = np.array([f.minimum for f in manifest.features], dtype=np.float64)
        self.high = np.array([f.maximum for f in manifest.features], dtype=np.float64)

    def decode(self, body: bytes, header_length: str | None, max_rows: int) -> Decoded:
        """`header_length`: the `Inference-Header-Content-Length` header, when sent;
        `max_rows`: the most rows one request may carry (MAX_BATCH_SIZE)."""
        binary = b""
        if header_length is not None:
            if not (header_length.isascii() and header_length.isdigit()):
                raise TensorError("Inference-Header-Content-Length must be a byte count")
            length = int(header_length)
            if length > len(body):
                raise TensorError("Inference-Header-Content-Length is longer than the body")
            body, binary = body[:length], body[length:]
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TensorError(
                f"the request is not JSON ({exc}); NaN and Infinity are not JSON numbers"
            ) from None
        try:
            request = InferenceRequest.model_validate(document)
        except PydanticValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "request"
            raise TensorError(f"{where}: {first['msg']}") from None
        if len(request.inputs) != 1:
            raise TensorError(f"this model takes exactly one input, [N, {self.n_features}]")
        rows = self._rows(request.inputs[0], binary, header_length is not None, max_rows)
        return Decoded(rows, self._outputs(request.outputs), request.id)

    def _rows(self, tensor: RequestInput, binary: bytes, split: bool, max_rows: int) -> FloatArray:
        n_features = self.n_features
        dtype = _DTYPES.get(tensor.datatype)
        if dtype is None:
            raise TensorError("inputs.0.datatype: this model takes FP32 or FP64")
        shape = tensor.shape
        if len(shape) != 2 or shape[1] != n_features:
            raise TensorError(f"inputs.0.shape: this model takes [N, {n_features}]")
        n_rows = shape[0]
        if not 1 <= n_rows <= max_rows:
            raise TensorError(f"inputs.0.shape: N must be 1 to {max_rows} (MAX_BATCH_SIZE)")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            array = self._binary(tensor, size, binary, split, dtype, n_rows)
        else:
            if tensor.data is None:
                raise TensorError("inputs.0: no data (nor parameters.binary_data_size)")
            if binary:
                raise TensorError("binary data after the JSON header that no input declares")
            flat = _flat_numbers(tensor.data, n_rows, n_features)
            if dtype is np.float64:
                array = np.array(flat, dtype=np.float64)
            else:  # a value beyond FP32's range becomes infinite, refused below
                with np.errstate(over="ignore"):
                    array = np.array(flat, dtype=dtype)
        rows = array.reshape(n_rows, n_features).astype(np.float64, copy=False)
        # One pass for the common case: NaN fails both comparisons, infinities the bounds.
        inside = (rows >= self.low) & (rows <= self.high)
        if not inside.all():
            if not np.isfinite(rows).all():
                raise TensorError(
                    "inputs.0.data: values must be finite "
                    f"(no NaN, Infinity or values beyond {tensor.datatype})"
                )
            row, column = (int(i) for i in np.argwhere(~inside)[0])
            feature = self.features[column]
            raise TensorError(
                f"inputs.0.data: {feature.name} must be between {feature.minimum:g} and "
                f"{feature.maximum:g} (row {row})"
            )
        return rows

    @staticmethod
    def _binary(
        tensor: RequestInput,
        size: object,
        binary: bytes,
        split: bool,
        dtype: type[np.floating[Any]],
        n_rows: int,
    ) -> np.ndarray[Any, Any]:
        if not split:
            raise TensorError("binary_data_size needs the Inference-Header-Content-Length header")
        if tensor.data is not None:
            raise TensorError("inputs.0: both data and binary_data_size")
        if type(size) is not int or size != len(binary):
            raise TensorError(
                f"inputs.0.parameters.binary_data_size must be the {len(binary)} bytes after "
                "the JSON header"
            )
        wanted = math.prod(tensor.shape) * np.dtype(dtype).itemsize
        if size != wanted:
            raise TensorError(
                f"inputs.0: {size} bytes of binary data, shape and datatype need {wanted}"
            )
        little_endian = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(binary, dtype=little_endian).reshape(n_rows, -1)

    @staticmethod
    def _outputs(requested: list[RequestOutput] | None) -> tuple[str, ...]:
        if not requested:
            return OUTPUTS
        names: list[str] = []
        for output in requested:
            if output.name not in OUTPUTS or output.name in names:
                raise TensorError(
                    f"outputs: this model answers {LABEL} and {PROBABILITIES}, each at most once"
                )
            names.append(output.name)
        return tuple(names)


def _flat_numbers(data: list[Any], n_rows: int, n_features: int) -> list[Any]:
    """`data` as a flat list of numbers: flat, or nested as [N][features]."""
    if data and type(data[0]) is list:
        if len(data) != n_rows:
            raise TensorError(f"inputs.0.data: {len(data)} rows where the shape says {n_rows}")
        flat: list[Any] = []
        for row in data:
            if type(row) is not list or len(row) != n_features:
                raise TensorError(
                    f"inputs.0.data: nested data must be {n_rows} lists of {n_features} numbers"
                )
            flat += row
    else:
        flat = data
        if len(flat) != n_rows * n_features:
            raise TensorError(
                f"inputs.0.data: {len(flat)} values where the shape needs {n_rows * n_features}"
            )
    for value in flat:
        if type(value) not in _NUMBER_TYPES:
            raise TensorError("inputs.0.data: values must be numbers")
    return flat
