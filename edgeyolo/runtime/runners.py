"""torch, onnxruntime and OpenCV DNN runners built from one model (cfg + weights)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeyolo.contract import Contract, HeadSpec, decode_heads
from edgeyolo.errors import UsageError
from edgeyolo.runtime.base import RUNNERS, Runner


def _heads(model) -> list[HeadSpec]:
    return [HeadSpec(h.anchors, h.classes, h.scale_x_y) for h in model.heads]


@RUNNERS.register("torch")
class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model, contract: Contract, threads: int = 0):
        import torch

        super().__init__(contract)
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def infer_impl(self, blob: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(blob)).numpy()


@RUNNERS.register("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """Runs a decoded-output ONNX file; built from a model, it exports (and verifies) one first."""

    name = "onnxruntime"

    def __init__(self, model_or_path, contract: Contract, threads: int = 0):
        from edgeyolo.runtime.onnxruntime import make_session

        super().__init__(contract)
        if isinstance(model_or_path, (str, Path)):
            self.session = make_session(model_or_path, threads)
        else:
            from edgeyolo.compress.quant import is_quantized

            with tempfile.TemporaryDirectory() as tmp:
                if is_quantized(model_or_path):  # int8 as TensorRT would run it: the verified QDQ export
                    from edgeyolo.export.qdq import export_qdq

                    path = export_qdq(model_or_path, Path(tmp) / "model.onnx", (contract.height, contract.width)).path
                else:
                    from edgeyolo.export.onnx import export_onnx

                    path = export_onnx(model_or_path, Path(tmp) / "model.onnx", (contract.height, contract.width), contract=contract).path
                self.session = make_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: blob})[0]


@RUNNERS.register("onnxruntime-int8")
class OnnxRuntimeInt8Runner(OnnxRuntimeRunner):
    """onnxruntime on the host's int8 layout (``edgeyolo export int8``): a file, or a float model
    quantized first with ``calib_images`` (never the images it is then scored on)."""

    name = "onnxruntime-int8"

    def __init__(self, model_or_path, contract: Contract, threads: int = 0, calib_images=None):
        if isinstance(model_or_path, (str, Path)):
            super().__init__(model_or_path, contract, threads)
            return
        from edgeyolo.errors import UsageError
        from edgeyolo.export.host_int8 import export_host_int8

        if not calib_images:
            raise UsageError("the onnxruntime-int8 backend quantizes the model first: it needs calibration images")
        with tempfile.TemporaryDirectory() as tmp:
            path = export_host_int8(model_or_path, Path(tmp) / "model.onnx", calib_images, img_size=contract.height).path
            super().__init__(path, contract, threads)


@RUNNERS.register("opencv")
class OpenCVRunner(Runner):
    """OpenCV DNN on darknet cfg + weights (written from the model when it came from elsewhere).

    The raw head convs are read and decoded with the shared numpy decode: OpenCV's own [yolo]
    output zeroes class scores below its ``thresh`` and would change the contract.
    """

    name = "opencv"

    def __init__(self, model, contract: Contract, threads: int = 0, cfg_path: Path | None = None, weights_path: Path | None = None):
        from edgeyolo.runtime.opencv import blob_name, load_net

        from edgeyolo.compress.quant import is_quantized

        if is_quantized(model):
            raise UsageError(
                "OpenCV DNN reads darknet files, which carry no quantization: use --backend torch (fake-quant) "
                "or onnxruntime (the int8 QDQ export)"
            )
        super().__init__(contract)
        self._tmp = None
        if cfg_path is None or weights_path is None:
            from edgeyolo.export.darknet import export_darknet

            self._tmp = tempfile.TemporaryDirectory()
            written = export_darknet(model, self._tmp.name)
            cfg_path, weights_path = written.cfg, written.weights
        # OpenCV's own default (Winograd on): the fastest configuration a user would run
        self.net = load_net(cfg_path, weights_path, threads=threads, winograd=True)
        names = list(self.net.getLayerNames())
        self.outputs = [blob_name(model.cfg, h.layer - 1, names) for h in model.heads]
        self.heads = _heads(model)

    def infer_impl(self, blob: np.ndarray) -> np.ndarray:
        self.net.setInput(blob)
        raws = self.net.forward(self.outputs)
        return decode_heads(list(raws), self.heads, blob.shape[2], blob.shape[3])

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def make_runner(backend: str, model, contract: Contract, threads: int = 0, cfg_path: Path | None = None, weights_path: Path | None = None,
                calib_images=None) -> Runner:
    """A runner by name. OpenCV reuses the user's darknet files when those are what was given; the int8
    runner calibrates on ``calib_images`` (BGR arrays)."""
    cls = RUNNERS.get(backend)
    if cls is OpenCVRunner:
        return OpenCVRunner(model, contract, threads, cfg_path, weights_path)
    if cls is OnnxRuntimeInt8Runner:
        return OnnxRuntimeInt8Runner(model, contract, threads, calib_images)
    return cls(model, contract, threads)
