"""Triton python-backend model: runs the exported ONNX graph with onnxruntime.

Triton's dynamic batcher hands ``execute`` several requests at once; they are concatenated into one
onnxruntime call and the result is split back per request.
"""

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        options = ort.SessionOptions()
        threads = int(os.environ.get("DEEPLENS_ONNX_THREADS", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's pool threads spin between calls by default: on a machine whose cores are shared with the
        # rest of the pipeline that burns several times the model's own CPU time. Off unless asked for.
        spin = os.environ.get("DEEPLENS_ONNX_SPIN", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = np.ascontiguousarray(np.concatenate(arrays, axis=0), dtype=np.uint8)
        out = self._session.run([self._output], {self._input: batch})[0].astype(np.float32)
        responses = []
        start = 0
        for size in sizes:
            tensor = pb_utils.Tensor("embedding", out[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses

    def finalize(self) -> None:
        self._session = None
