#!/usr/bin/env python3
"""edgeyolo's on-board agent: one file, copied to the board and run there with its own python.

It must run on what the boards ship: Python 3.6 (JetPack 4.x on the Jetson Nano), numpy, OpenCV, and
the board's runtime (TensorRT 8.2 bindings API or 10.x tensor API with pycuda, VART/xir on the DPU
boards, onnxruntime anywhere). So: Python 3.6 syntax (checked with vermin), the standard library at
import time, everything else imported lazily, and no edgeyolo import at all.

It carries its own copy of edgeyolo's pre/post-processing contract (letterbox, channel order,
scale, decode, scoring, NMS); tests/targets/test_agent_contract.py asserts it computes exactly what
``edgeyolo.contract`` computes, on real photos, so host and board cannot drift apart.

Commands (all output is JSON; results are written as JSON lines as they are produced, flushed
line by line, so whatever the agent finished survives if it is killed):

    agent.py info                         board state: versions, tools, power mode, disk, swap
    agent.py bench --model M --out F      warm-up, then a fixed duration with 1 and N streams
    agent.py predict --model M --list L --out F    detections for an eval set (mAP is scored on the host)
    agent.py app --model M --source SRC [--output V] [--jsonl F]   the minimal on-board detector: frames
                                          from a file, camera or GStreamer pipeline (--jetson-csi), boxes
                                          drawn into a video and/or detections as JSON lines, FPS at the end
"""
import argparse
import errno
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

AGENT_VERSION = 1
INTERPOLATIONS = {"linear": 1, "nearest": 0, "area": 3, "cubic": 2}  # cv2.INTER_* values


class AgentError(Exception):
    """A failure the user can fix; printed as one line, exit code 3."""


def _need(module, hint):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AgentError(f"the module '{module}' is not installed on the board; {hint}")


# ============================================================================ the contract (copy)
# Keep in step with edgeyolo/contract.py; test_agent_contract.py fails the moment they differ.


class Letterbox(object):
    __slots__ = ("scale_x", "scale_y", "pad_x", "pad_y", "orig_h", "orig_w")

    def __init__(self, scale_x, scale_y, pad_x, pad_y, orig_h, orig_w):
        self.scale_x, self.scale_y, self.pad_x, self.pad_y = scale_x, scale_y, pad_x, pad_y
        self.orig_h, self.orig_w = orig_h, orig_w

    def as_tuple(self):
        return (self.scale_x, self.scale_y, self.pad_x, self.pad_y, self.orig_h, self.orig_w)


class Contract(object):
    DEFAULTS = {
        "height": 416, "width": 416, "resize": "letterbox", "interpolation": "linear", "pad_value": 0.5,
        "channel_order": "rgb", "scale": 1.0 / 255.0, "conf_threshold": 0.25, "iou_threshold": 0.45,
        "max_detections": 100, "agnostic_nms": False, "classes": None, "max_candidates": 30000,
    }

    def __init__(self, **values):
        for key, default in self.DEFAULTS.items():
            setattr(self, key, values.get(key, default))
        if self.classes is not None:
            self.classes = tuple(self.classes)
        if self.resize not in ("letterbox", "stretch") or self.interpolation not in INTERPOLATIONS:
            raise AgentError(f"unsupported contract: resize={self.resize} interpolation={self.interpolation}")
        if self.channel_order not in ("rgb", "bgr", "gray"):
            raise AgentError(f"unsupported contract channel order '{self.channel_order}'")

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))

    @property
    def channels(self):
        return 1 if self.channel_order == "gray" else 3

    def letterbox_geometry(self, orig_h, orig_w):
        if self.resize == "stretch":
            return self.height, self.width, Letterbox(self.width / orig_w, self.height / orig_h, 0.0, 0.0, orig_h, orig_w)
        if self.width / orig_w < self.height / orig_h:
            new_w, new_h = self.width, (orig_h * self.width) // orig_w
        else:
            new_h, new_w = self.height, (orig_w * self.height) // orig_h
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        pad_x, pad_y = (self.width - new_w) // 2, (self.height - new_h) // 2
        return new_h, new_w, Letterbox(new_w / orig_w, new_h / orig_h, float(pad_x), float(pad_y), orig_h, orig_w)

    def preprocess(self, image_bgr):
        """BGR uint8 HxWx3 (or HxW gray, or BGRA) -> float32 [1, C, H, W] and the mapping back."""
        import cv2
        import numpy as np

        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] not in (3, 4):
            raise AgentError(f"expected an HxWx3 image, got shape {image_bgr.shape}")
        if image_bgr.shape[2] == 4:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGRA2BGR)
        h, w = image_bgr.shape[:2]
        new_h, new_w, box = self.letterbox_geometry(h, w)
        if self.channel_order == "rgb":
            image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        elif self.channel_order == "gray":
            image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
        else:
            image = image_bgr
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATIONS[self.interpolation])
            if image.ndim == 2:
                image = image[:, :, None]
        canvas = np.full((self.height, self.width, self.channels), self.pad_value, dtype=np.float32)
        x0, y0 = int(box.pad_x), int(box.pad_y)
        canvas[y0:y0 + new_h, x0:x0 + new_w] = image.astype(np.float32) * self.scale
        return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]), box

    def postprocess(self, prediction, box=None):
        """Decoded [N, 5+C] rows -> float32 [M, 6] (x1, y1, x2, y2, score, class), best first."""
        import numpy as np

        pred = np.asarray(prediction, dtype=np.float32)
        if pred.ndim != 2 or pred.shape[1] < 6:
            raise AgentError(f"expected decoded predictions [N, 5+C], got shape {pred.shape}")
        scores = pred[:, 4:5] * pred[:, 5:]
        rows, cls = np.nonzero(scores > self.conf_threshold)
        if self.classes is not None:
            keep = np.isin(cls, np.asarray(self.classes))
            rows, cls = rows[keep], cls[keep]
        if rows.size == 0:
            return np.zeros((0, 6), dtype=np.float32)
        if rows.size > self.max_candidates:
            top = np.argsort(-scores[rows, cls], kind="stable")[:self.max_candidates]
            rows, cls = rows[top], cls[top]
        p = pred[rows]
        half_w, half_h = p[:, 2] / 2, p[:, 3] / 2
        xyxy = np.stack([p[:, 0] - half_w, p[:, 1] - half_h, p[:, 0] + half_w, p[:, 1] + half_h], axis=1)
        score = scores[rows, cls]
        keep = nms(xyxy, score, None if self.agnostic_nms else cls, self.iou_threshold, self.max_detections)
        det = np.concatenate([xyxy[keep], score[keep, None], cls[keep, None].astype(np.float32)], axis=1)
        if box is not None:
            det[:, [0, 2]] = ((det[:, [0, 2]] - box.pad_x) / box.scale_x).clip(0, box.orig_w)
            det[:, [1, 3]] = ((det[:, [1, 3]] - box.pad_y) / box.scale_y).clip(0, box.orig_h)
        return det.astype(np.float32)


def nms(boxes, scores, classes, iou_threshold, max_keep=None):
    """Greedy NMS (per class unless classes is None); kept indices by descending score."""
    import numpy as np

    boxes = np.asarray(boxes, dtype=np.float64)
    if classes is not None and boxes.size:
        span = boxes.max() - boxes.min() + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    if boxes.size:
        x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    else:
        x1 = y1 = x2 = y2 = np.zeros(0)
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    limit = len(order) if max_keep is None else max_keep
    keep = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        ious = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _sigmoid(x):
    import numpy as np

    return 0.5 * (1.0 + np.tanh(0.5 * x))


def decode_heads(raws, heads, img_h, img_w):
    """Raw heads [B, A*(5+C), H, W] -> [B, N, 5+C]; heads = [(anchors, classes, scale_x_y)]."""
    import numpy as np

    out = []
    for raw, (anchors_list, classes, s) in zip(raws, heads):
        raw = np.asarray(raw, dtype=np.float32)
        b, _, h, w = raw.shape
        a = len(anchors_list)
        p = raw.reshape(b, a, classes + 5, h, w).transpose(0, 1, 3, 4, 2)
        xy = _sigmoid(p[..., 0:2]) * s - 0.5 * (s - 1.0)
        gx = np.arange(w, dtype=np.float32).reshape(1, 1, 1, w)
        gy = np.arange(h, dtype=np.float32).reshape(1, 1, h, 1)
        anchors = np.asarray(anchors_list, dtype=np.float32).reshape(1, a, 1, 1, 2)
        decoded = np.empty_like(p)
        decoded[..., 0] = (xy[..., 0] + gx) * (img_w / w)
        decoded[..., 1] = (xy[..., 1] + gy) * (img_h / h)
        decoded[..., 2:4] = np.exp(np.minimum(p[..., 2:4], 60.0)) * anchors
        decoded[..., 4:] = _sigmoid(p[..., 4:])
        out.append(decoded.reshape(b, -1, classes + 5))
    return np.concatenate(out, axis=1)


# ============================================================================ model metadata


def sidecar_path(model):
    """``model.edgeyolo.json`` beside ``model.onnx``: an engine or xmodel built on the board from that
    ONNX (same stem) finds the contract it was exported with."""
    return os.path.splitext(model)[0] + ".edgeyolo.json"


def read_sidecar(model):
    """The contract and outputs recorded next to a model (written by `edgeyolo deploy`)."""
    path = sidecar_path(model)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


class ModelInfo(object):
    def __init__(self, meta, model):
        if not meta or "edgeyolo.contract" not in meta:
            raise AgentError(
                f"{model} carries no edgeyolo contract: export it with `edgeyolo export onnx` (the contract is in "
                f"the ONNX metadata), or deploy it with its {os.path.basename(sidecar_path(model))} sidecar"
            )
        self.contract_json = meta["edgeyolo.contract"]
        outputs = json.loads(meta.get("edgeyolo.outputs", '{"raw": false, "names": ["detections"], "heads": []}'))
        self.raw = bool(outputs.get("raw"))
        self.names = list(outputs.get("names", []))
        # [layer, stride, anchors, classes, scale_x_y]
        self.heads = [(h[2], h[3], h[4]) for h in outputs.get("heads", [])]
        self.strides = [h[1] for h in outputs.get("heads", [])]

    def contract(self, **overrides):
        values = json.loads(self.contract_json)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Contract(**values)


# ============================================================================ backends


class OnnxRuntimeBackend(object):
    name = "onnxruntime"

    def __init__(self, model, threads=0):
        ort = _need("onnxruntime", "install it with `pip3 install onnxruntime` (or the board vendor's wheel)")
        options = ort.SessionOptions()
        try:  # threads that do not spin between calls: several streams share the cores fairly
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        except AttributeError:
            pass
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        except TypeError:  # onnxruntime < 1.9 has no providers argument
            self.session = ort.InferenceSession(model, sess_options=options)
        meta = read_sidecar(model) or dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo(meta, model)
        self.input_name = self.session.get_inputs()[0].name
        self.version = getattr(ort, "__version__", "?")

    def for_thread(self):
        return self  # InferenceSession.run is thread-safe

    def infer(self, blob):
        outs = self.session.run(None, {self.input_name: blob})
        if self.info.raw:
            return decode_heads(outs, self.info.heads, blob.shape[2], blob.shape[3])
        return outs[0]

    def close(self):
        pass


class TensorRTBackend(object):
    """A serialized engine: the 8.x bindings API (JetPack 4.6, TensorRT 8.2) or the tensor API
    (TensorRT >= 8.5, the only one in 10.x), with pycuda for device memory."""

    name = "tensorrt"

    def __init__(self, model, threads=0, _shared=None):
        self.trt = trt = _need("tensorrt", "it ships with JetPack (python3-libnvinfer); build the engine on this board")
        cuda = _need("pycuda.driver", "install pycuda (`pip3 install pycuda`) for device buffers")
        self.cuda = cuda
        if _shared is None:
            cuda.init()
            self.cuda_context = cuda.Device(0).retain_primary_context()
            self.cuda_context.push()
            logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(logger)
            with open(model, "rb") as fh:
                self.engine = self.runtime.deserialize_cuda_engine(fh.read())
            if self.engine is None:
                raise AgentError(f"TensorRT could not deserialize {model}: engines are tied to the TensorRT version "
                                 "and GPU they were built with; rebuild it on this board")
            self.info = ModelInfo(read_sidecar(model), model)
        else:
            self.cuda_context, self.runtime, self.engine, self.info = _shared
            self.cuda_context.push()
        self.version = getattr(trt, "__version__", "?")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.tensor_api = hasattr(self.engine, "num_io_tensors")
        self._buffers = {}  # name -> (host, device, is_input)
        self._shape = None
        self.cuda_context.pop()

    def for_thread(self):
        return TensorRTBackend(None, _shared=(self.cuda_context, self.runtime, self.engine, self.info))

    def _io(self):
        trt, e = self.trt, self.engine
        if self.tensor_api:
            for i in range(e.num_io_tensors):
                name = e.get_tensor_name(i)
                yield name, e.get_tensor_mode(name) == trt.TensorIOMode.INPUT, trt.nptype(e.get_tensor_dtype(name))
        else:
            for i in range(e.num_bindings):
                yield e.get_binding_name(i), e.binding_is_input(i), trt.nptype(e.get_binding_dtype(i))

    def _allocate(self, blob):
        import numpy as np

        cuda, c = self.cuda, self.context
        for index, (name, is_input, dtype) in enumerate(self._io()):
            if is_input:
                if self.tensor_api:
                    c.set_input_shape(name, blob.shape)
                else:
                    c.set_binding_shape(index, blob.shape)
        self._buffers = {}
        self._bindings = []
        for index, (name, is_input, dtype) in enumerate(self._io()):
            shape = tuple(c.get_tensor_shape(name) if self.tensor_api else c.get_binding_shape(index))
            host = cuda.pagelocked_empty(int(np.prod(shape)), dtype).reshape(shape)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self._buffers[name] = (host, device, is_input)
            self._bindings.append(int(device))
            if self.tensor_api:
                c.set_tensor_address(name, int(device))
        self._shape = blob.shape

    def infer(self, blob):
        cuda = self.cuda
        self.cuda_context.push()
        try:
            if self._shape != blob.shape:
                self._allocate(blob)
            for host, device, is_input in self._buffers.values():
                if is_input:
                    host[...] = blob.astype(host.dtype)
                    cuda.memcpy_htod_async(device, host, self.stream)
            if self.tensor_api:
                ok = self.context.execute_async_v3(self.stream.handle)
            else:
                ok = self.context.execute_async_v2(bindings=self._bindings, stream_handle=self.stream.handle)
            if not ok:
                raise AgentError("TensorRT execution failed")
            for host, device, is_input in self._buffers.values():
                if not is_input:
                    cuda.memcpy_dtoh_async(host, device, self.stream)
            self.stream.synchronize()
        finally:
            self.cuda_context.pop()
        outs = {name: host.astype("float32") for name, (host, _, is_input) in self._buffers.items() if not is_input}
        if self.info.raw:
            return decode_heads([outs[n] for n in self.info.names], self.info.heads, blob.shape[2], blob.shape[3])
        return outs[self.info.names[0]] if self.info.names and self.info.names[0] in outs else list(outs.values())[0]

    def close(self):
        self._buffers = {}


class VartBackend(object):
    """A compiled xmodel on the DPU through VART: int8 NHWC tensors with power-of-two fix points; the
    YOLO decode and NMS run on the Arm cores with the contract above."""

    name = "vart"

    def __init__(self, model, threads=0, _shared=None):
        xir = _need("xir", "it ships with the Vitis AI board image (vitis-ai-runtime)")
        self.vart = _need("vart", "it ships with the Vitis AI board image (vitis-ai-runtime)")
        if _shared is None:
            graph = xir.Graph.deserialize(model)
            root = graph.get_root_subgraph()
            dpu = [s for s in root.toposort_child_subgraph()
                   if s.has_attr("device") and s.get_attr("device").upper() == "DPU"]
            if len(dpu) != 1:
                raise AgentError(f"{model} has {len(dpu)} DPU subgraphs, expected 1: operators fell back to the CPU; "
                                 "check the compile log (vai_c_xir) for unsupported layers")
            self.graph, self.subgraph = graph, dpu[0]
            self.info = ModelInfo(read_sidecar(model), model)
        else:
            self.graph, self.subgraph, self.info = _shared
        self.runner = self.vart.Runner.create_runner(self.subgraph, "run")  # one runner per thread
        self.input = self.runner.get_input_tensors()[0]
        self.outputs = self.runner.get_output_tensors()
        self.version = "vart"

    def for_thread(self):
        return VartBackend(None, _shared=(self.graph, self.subgraph, self.info))

    def infer(self, blob):
        import numpy as np

        in_scale = 2.0 ** self.input.get_attr("fix_point")
        x = np.clip(np.floor(blob.transpose(0, 2, 3, 1) * in_scale + 0.5), -128, 127).astype(np.int8)
        x = np.ascontiguousarray(x.reshape(tuple(self.input.dims)))
        outs = [np.empty(tuple(t.dims), dtype=np.int8, order="C") for t in self.outputs]
        job = self.runner.execute_async([x], outs)
        self.runner.wait(job)
        raws = [o.astype(np.float32).transpose(0, 3, 1, 2) * (2.0 ** -t.get_attr("fix_point"))
                for o, t in zip(outs, self.outputs)]
        # heads by grid size: the DPU's output order need not be the cfg's
        ordered = []
        for stride in self.info.strides:
            grid = (blob.shape[2] // stride, blob.shape[3] // stride)
            match = [r for r in raws if tuple(r.shape[2:]) == grid]
            if not match:
                raise AgentError(f"no DPU output has the {grid[0]}x{grid[1]} grid of the stride-{stride} head")
            ordered.append(match[0])
        return decode_heads(ordered, self.info.heads, blob.shape[2], blob.shape[3])

    def close(self):
        self.runner = None


BACKENDS = {".onnx": OnnxRuntimeBackend, ".engine": TensorRTBackend, ".plan": TensorRTBackend,
            ".trt": TensorRTBackend, ".xmodel": VartBackend}


def load_backend(model, threads=0):
    if not os.path.isfile(model):
        raise AgentError(f"model {model} not found on the board; deploy it first (`edgeyolo deploy`)")
    ext = os.path.splitext(model)[1].lower()
    if ext not in BACKENDS:
        raise AgentError(f"cannot run {model}: expected one of {', '.join(sorted(BACKENDS))}")
    return BACKENDS[ext](model, threads)


# ============================================================================ board state


# A non-login SSH session's PATH often lacks the sbin folders (nvpmodel is /usr/sbin/nvpmodel on
# JetPack) and vendor folders: tools are looked for there too, as trtexec is.
TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin", "/usr/local/bin", "/opt/nvidia/jetson/bin")


def find_tool(name):
    """The tool's path: on PATH, else in the usual system folders; None when absent."""
    if os.sep in name:
        return name if os.path.isfile(name) else None
    found = shutil.which(name)
    if found:
        return found
    for folder in TOOL_DIRS:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _run(cmd, timeout=10):
    """{'cmd', 'code', 'out'} of a tool, or None when it is not installed."""
    tool = find_tool(cmd[0])
    if tool is None:
        return None
    cmd = [tool] + list(cmd[1:])
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, universal_newlines=True)
        return {"cmd": " ".join(cmd), "code": p.returncode, "out": p.stdout[-20000:]}
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else (exc.output or "")
        return {"cmd": " ".join(cmd), "code": None, "out": out[-20000:]}
    except OSError as exc:
        return {"cmd": " ".join(cmd), "code": None, "out": str(exc)}


def _read(path, limit=20000):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace").replace("\x00", "")
    except (IOError, OSError):
        return None


def _module_version(name):
    import importlib

    try:
        module = importlib.import_module(name)
    except Exception:  # a broken vendor module must not stop the report
        return None
    for attr in ("__version__", "VERSION_TEXT", "version"):
        value = getattr(module, attr, None)
        if isinstance(value, str):
            return value
    return "present"


MODULES = ("numpy", "cv2", "onnxruntime", "tensorrt", "pycuda", "cuda", "xir", "vart", "PIL")
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/bin/trtexec")
NVINFER_PACKAGES = ("libnvinfer10", "libnvinfer8", "libnvinfer7", "tensorrt")
NVINFER_HEADERS = (
    "/usr/include/aarch64-linux-gnu/NvInferVersion.h", "/usr/include/x86_64-linux-gnu/NvInferVersion.h",
    "/usr/include/NvInferVersion.h", "/usr/local/tensorrt/include/NvInferVersion.h",
)
# The GPU of each Jetson SoC (the last entry of /proc/device-tree/compatible), named as the target
# profiles name it, so an engine key computed from the board equals the one the profile predicts.
TEGRA_GPUS = {"tegra210": "Maxwell GM20B", "tegra186": "Pascal GP10B", "tegra194": "Volta GV10B", "tegra234": "Ampere GA10B"}


def _version_text(text):
    m = re.match(r"\s*(\d+\.\d+(?:\.\d+)*)", text or "")
    return m.group(1) if m else None


def tensorrt_version(import_module=True):
    """{'version', 'source'} of the board's TensorRT, or None: what an engine is tied to. Read from the
    Python bindings, else the Debian package, else the C++ header (JetPack has all three, a minimal
    image may have only the library package)."""
    if import_module:
        v = _version_text(_module_version("tensorrt") or "")
        if v:
            return {"version": v, "source": "python tensorrt module"}
    for package in NVINFER_PACKAGES:
        r = _run(["dpkg-query", "-W", "-f=${Version}", package])
        v = _version_text(r["out"]) if r and r["code"] == 0 else None
        if v:
            return {"version": v, "source": "dpkg " + package}
    for header in NVINFER_HEADERS:
        text = _read(header)
        if not text:
            continue
        defines = dict(re.findall(r"#define\s+(\w+)\s+(\w+)", text))
        parts = []
        for name in ("NV_TENSORRT_MAJOR", "NV_TENSORRT_MINOR", "NV_TENSORRT_PATCH"):
            value = defines.get(name, "")
            value = defines.get(value, value)  # TensorRT 10 defines them through TRT_*_ENTERPRISE
            if not value.isdigit():
                break
            parts.append(value)
        if len(parts) == 3:
            return {"version": ".".join(parts), "source": header}
    return None


def gpu_name():
    """{'name', 'source'} of the GPU an engine would be built for, or None."""
    r = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if r and r["code"] == 0 and r["out"].strip():
        return {"name": r["out"].strip().splitlines()[0].strip(), "source": "nvidia-smi"}
    try:
        with open("/proc/device-tree/compatible", "rb") as fh:
            compatible = [c.decode("ascii", "replace") for c in fh.read(4096).split(b"\x00") if c]
    except (IOError, OSError):
        compatible = []
    for entry in reversed(compatible):
        soc = entry.split(",")[-1]
        if soc.startswith("tegra"):
            return {"name": TEGRA_GPUS.get(soc, soc), "source": "/proc/device-tree/compatible " + entry}
    return None


def board_state(workdir=".", modules=True):
    """What decides a board's numbers, as raw text; the host parses it."""
    state = {
        "agent": AGENT_VERSION,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "device_model": _read("/proc/device-tree/model"),
        "l4t": _read("/etc/nv_tegra_release"),
        "jetpack": _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]),
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "jetson_clocks": _run(["jetson_clocks", "--show"]),
        "trtexec": find_tool("trtexec") or next((p for p in TRTEXEC_PATHS if os.path.isfile(p)), None),
        "xdputil": find_tool("xdputil"),
        "xdputil_query": _run(["xdputil", "query"], timeout=20),
        "meminfo": _read("/proc/meminfo"),
        "tensorrt": tensorrt_version(import_module=modules),
        "gpu": gpu_name(),
        # Xavier / Orin DLA engines appear as /dev/nvhost-nvdla0, nvdla1 (none on Nano, TX2, Orin Nano)
        "dla_cores": len(glob.glob("/dev/nvhost-nvdla[0-9]*")),
    }
    try:
        st = os.statvfs(workdir)
        state["disk"] = {"path": os.path.abspath(workdir), "free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}
    except OSError:
        state["disk"] = None
    if modules:
        state["modules"] = {m: _module_version(m) for m in MODULES}
    return state


class Tegrastats(object):
    """tegrastats' raw lines while a phase runs (power rails, clocks, load); parsed on the host."""

    def __init__(self, interval_ms=500):
        self.lines = []
        self.proc = None
        tool = find_tool("tegrastats")
        if tool:
            try:
                self.proc = subprocess.Popen([tool, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, universal_newlines=True)
                CHILDREN.append(self.proc)
            except OSError:
                self.proc = None
        if self.proc is not None:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self):
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.thread.join(timeout=2)
        return "\n".join(self.lines)


# ============================================================================ watchdog

CHILDREN = []  # processes this agent started (tegrastats): stopped with it


def _give_up(reason):
    try:  # the client's end of stderr may be gone with it
        sys.stderr.write(f"edgeyolo-agent: stopping: {reason}\n")
        sys.stderr.flush()
    except (IOError, OSError, ValueError):
        pass
    for proc in CHILDREN:
        try:
            proc.kill()
        except OSError:
            pass
    os._exit(4)


def start_watchdog(seconds):
    """Stop when the client is gone. It sends a newline on our stdin every second; EOF (its
    connection closed: the client died or was interrupted) or ``seconds`` without a newline (the
    network went silent) ends the agent at once, so no orphan keeps the board busy."""
    if not seconds or seconds <= 0:
        return
    last = [time.time()]

    def read():
        while True:
            try:
                chunk = os.read(0, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                _give_up("the client closed the connection")
            last[0] = time.time()

    def watch():
        while True:
            time.sleep(0.5)
            if time.time() - last[0] > seconds:
                _give_up(f"no heartbeat from the client for {seconds:g} s")

    for target in (read, watch):
        threading.Thread(target=target, daemon=True).start()


# ============================================================================ results file


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path, exc):
    """The AgentError for a write that found the disk full: what, where and how much is free."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
        free = f"{st.f_bavail * st.f_frsize // 1000} kB free"
    except OSError:
        free = "free space unknown"
    return AgentError(f"the board's disk is full: cannot write {path} ({free} in {folder}); the records written "
                      f"before are kept. Free space on the board ({exc.strerror})")


class JsonLines(object):
    """Append-only results: one JSON object per line, each written by one unbuffered write (a kill
    loses nothing written; a full disk loses at most the line being written, and says so)."""

    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(path)
        try:
            if folder and not os.path.isdir(folder):
                os.makedirs(folder)
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise disk_full(path, exc)
            raise
        self.lock = threading.Lock()

    def write(self, **record):
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with self.lock:
            try:
                if os.write(self.fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise disk_full(self.path, exc)
                raise

    def close(self):
        os.close(self.fd)


# ============================================================================ commands


def load_images(folder, limit=64):
    import cv2

    images = []
    if folder:
        for name in sorted(os.listdir(folder)):
            image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
            if image is not None:
                images.append(image)
            if len(images) >= limit:
                break
    if not images:  # seeded noise at a camera-like size: the contract's letterbox still does its work
        import numpy as np

        rng = np.random.RandomState(0)
        images = [rng.randint(0, 256, (480, 640, 3)).astype(np.uint8) for _ in range(4)]
    return images


def run_phase(backend, contract, images, streams, warmup, duration, out):
    """``streams`` threads, each pre -> infer -> post in a loop; latencies flushed twice a second."""
    lat, lock = [], threading.Lock()
    start_timed = time.time() + warmup
    end = start_timed + duration
    workers = [backend.for_thread() for _ in range(streams)]
    errors = []
    stop = threading.Event()  # set when this phase fails (a full disk): the streams end before we do

    def loop(worker, offset):
        i = offset
        try:
            while time.time() < end and not stop.is_set():
                image = images[i % len(images)]
                i += streams
                t0 = time.perf_counter()
                blob, box = contract.preprocess(image)
                t1 = time.perf_counter()
                pred = worker.infer(blob)
                t2 = time.perf_counter()
                contract.postprocess(pred[0], box)
                t3 = time.perf_counter()
                if time.time() >= start_timed:
                    with lock:
                        lat.append((round((t1 - t0) * 1e3, 4), round((t2 - t1) * 1e3, 4), round((t3 - t2) * 1e3, 4)))
        except Exception as exc:  # reported, and the phase ends
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop, args=(w, k), daemon=True) for k, w in enumerate(workers)]
    out.write(kind="phase_start", streams=streams, warmup=warmup, duration=duration)
    for t in threads:
        t.start()
    try:
        while time.time() < start_timed and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        timed_from = time.time()
        frames = 0
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            with lock:
                batch, lat[:] = list(lat), []
            if batch:
                frames += len(batch)
                out.write(kind="frames", streams=streams, t=round(time.time() - timed_from, 4), lat=batch)
    except BaseException:
        # an inference runtime's threads still running at interpreter exit abort the process
        # (std::terminate): a clear error would become "killed by a signal"
        stop.set()
        for t in threads:
            t.join(timeout=30)
        raise
    with lock:
        batch, lat[:] = list(lat), []
    seconds = time.time() - timed_from
    if batch:
        frames += len(batch)
        out.write(kind="frames", streams=streams, t=round(seconds, 4), lat=batch)
    out.write(kind="phase_end", streams=streams, frames=frames, seconds=round(seconds, 4), errors=errors)
    if errors:
        raise AgentError("inference failed: " + errors[0])


def _stdout_to_stderr(fn, *args, **kwargs):
    """Call ``fn`` with file descriptor 1 pointing at stderr: a broken vendor module that prints
    while it is imported (a numpy mismatch does) must not corrupt the JSON on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return fn(*args, **kwargs)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_info(args):
    if args.engine:  # only what a TensorRT engine is tied to: quick, no other module imported
        state = _stdout_to_stderr(lambda: {"agent": AGENT_VERSION, "tensorrt": tensorrt_version(), "gpu": gpu_name()})
        print(json.dumps(state, sort_keys=True))
        return
    print(json.dumps(_stdout_to_stderr(board_state, args.workdir), sort_keys=True))


def cmd_bench(args):
    out = JsonLines(args.out)
    out.write(kind="start", pid=os.getpid(), model=args.model, agent=AGENT_VERSION, time=time.time())
    backend = load_backend(args.model, args.ort_threads)
    contract = backend.info.contract()
    images = load_images(args.images)
    streams = args.streams or min(4, os.cpu_count() or 1)
    out.write(kind="setup", backend=backend.name, runtime_version=backend.version, input=[contract.height, contract.width],
              channel_order=contract.channel_order, images=len(images), streams=[1, streams])
    out.write(kind="board", state=board_state(args.workdir, modules=False))
    sys.stderr.write(f"edgeyolo-agent: {os.path.basename(args.model)} on {backend.name} ({backend.version}), "
                     f"warm-up {args.warmup:g} s, {args.duration:g} s per phase\n")
    sys.stderr.flush()
    for n in sorted({1, streams}):
        power = Tegrastats()
        try:
            run_phase(backend, contract, images, n, args.warmup, args.duration, out)
        finally:
            out.write(kind="power", streams=n, tegrastats=power.stop())
        sys.stderr.write(f"edgeyolo-agent: {n} stream(s) done\n")
        sys.stderr.flush()
    backend.close()
    out.write(kind="done", time=time.time())
    out.close()


def _detect(contract, backend, image):
    """Detections of one image by the shared contract, and the seconds the inference alone took."""
    blob, box = contract.preprocess(image)
    t0 = time.perf_counter()
    pred = backend.infer(blob)
    seconds = time.perf_counter() - t0
    return contract.postprocess(pred[0], box), seconds


def cmd_predict(args):
    import cv2

    out = JsonLines(args.out)
    backend = load_backend(args.model, args.ort_threads)
    contract = backend.info.contract(conf_threshold=args.conf, iou_threshold=args.iou, max_detections=args.max_det)
    with open(args.list) as fh:
        paths = [line.rstrip("\n") for line in fh if line.strip()]
    out.write(kind="start", pid=os.getpid(), model=args.model, images=len(paths), backend=backend.name)
    infer_s = 0.0
    for index, path in enumerate(paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            out.write(kind="skip", index=index, reason="not a readable image")
            continue
        det, seconds = _detect(contract, backend, image)
        infer_s += seconds
        out.write(kind="det", index=index, det=det.tolist())
    out.write(kind="done", images=len(paths), infer_seconds=infer_s)
    out.close()


# ============================================================================ the on-board app


def jetson_csi_pipeline(sensor_id=0, width=1280, height=720, fps=30, flip=0):
    """The GStreamer pipeline for a Jetson CSI camera (IMX219 & co. through the Argus ISP): NV12 in
    NVMM memory, converted by the VIC (nvvidconv) to BGRx, then to the BGR frames OpenCV reads. The
    appsink drops stale frames, so a slow model sees the newest frame, not a growing queue."""
    return (
        f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
        f"video/x-raw(memory:NVMM), width=(int){int(width)}, height=(int){int(height)}, "
        f"format=(string)NV12, framerate=(fraction){int(fps)}/1 ! "
        f"nvvidconv flip-method={int(flip)} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1"
    )


def open_capture(source):
    """cv2.VideoCapture of a camera index ('0'), a GStreamer pipeline (has ' ! ') or a file/URL."""
    import cv2

    if source.isdigit():
        cap, what = cv2.VideoCapture(int(source)), f"camera {source} (/dev/video{source})"
        hint = "is a camera plugged in, and is the user in the 'video' group?"
    elif "!" in source:
        cap, what = cv2.VideoCapture(source, cv2.CAP_GSTREAMER), "the GStreamer pipeline"
        hint = ("this OpenCV must be built with GStreamer (JetPack's python3-opencv is; pip's opencv-python is not), "
                "and the pipeline must run with gst-launch-1.0 (end it with fakesink to try)")
    else:
        if "://" not in source and not os.path.isfile(source):
            raise AgentError(f"video {source} not found on the board")
        cap, what, hint = cv2.VideoCapture(source), source, "is it a video OpenCV can decode (ffmpeg/GStreamer)?"
    if not cap.isOpened():
        raise AgentError(f"could not open {what}: {hint}")
    return cap


def _video_writer(path, fps, shape):
    import cv2

    fourcc = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "XVID"}.get(os.path.splitext(path)[1].lower())
    if fourcc is None:
        raise AgentError(f"--output {path}: use .mp4, .avi or .mkv")
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise AgentError(f"OpenCV cannot write {path} with the {fourcc} codec on this board; try .avi (MJPG)")
    return writer


def draw_detections(frame, det, names=None):
    """Boxes with 'class score' labels, one colour per class, drawn in place."""
    import cv2

    for x1, y1, x2, y2, score, cls in det:
        c = int(cls)
        colour = ((c * 67 + 40) % 256, (c * 137 + 90) % 256, (c * 211 + 160) % 256)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(frame, p1, p2, colour, 2)
        label = f"{names[c] if names and c < len(names) else c} {score:.2f}"
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(p1[1] - h - base, 0)
        cv2.rectangle(frame, (p1[0], top), (p1[0] + w, top + h + base), colour, -1)
        cv2.putText(frame, label, (p1[0], top + h), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return frame


def cmd_app(args):
    import cv2

    if args.jetson_csi:
        source = jetson_csi_pipeline(args.sensor_id, args.width, args.height, args.fps, args.flip)
    elif args.source:
        source = args.source
    else:
        raise AgentError("give --source (a video file, a camera index or a GStreamer pipeline) or --jetson-csi")
    if not args.output and not args.jsonl:
        raise AgentError("nothing to write: give --output VIDEO and/or --jsonl FILE")
    names = None
    if args.names:
        with open(args.names) as fh:
            names = [line.strip() for line in fh if line.strip()]
    backend = load_backend(args.model, args.ort_threads)
    contract = backend.info.contract(conf_threshold=args.conf, iou_threshold=args.iou, max_detections=args.max_det)
    cap = open_capture(source)
    stop = threading.Event()  # SIGTERM (a remote timeout, Ctrl-C over ssh) ends the loop, not the file
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    out = JsonLines(args.jsonl) if args.jsonl else None
    if out is not None:
        out.write(kind="start", pid=os.getpid(), model=args.model, source=source, backend=backend.name)
    writer = None
    fps_in = cap.get(cv2.CAP_PROP_FPS)
    frames, infer_s, started = 0, 0.0, time.time()
    sys.stderr.write(f"edgeyolo-agent: {os.path.basename(args.model)} on {backend.name} ({backend.version}) "
                     f"reading {source}\n")
    sys.stderr.flush()
    try:
        while not stop.is_set() and (args.max_frames <= 0 or frames < args.max_frames):
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            det, seconds = _detect(contract, backend, frame)
            infer_s += seconds
            if out is not None:
                out.write(kind="frame", index=frames, det=det.tolist())
            if args.output:
                if writer is None:
                    writer = _video_writer(args.output, fps_in if 0 < fps_in < 1000 else 30.0, frame.shape)
                writer.write(draw_detections(frame, det, names))
            frames += 1
    except KeyboardInterrupt:
        pass
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        backend.close()
    seconds = time.time() - started
    summary = {"frames": frames, "seconds": round(seconds, 4), "fps": round(frames / seconds, 3) if seconds > 0 else 0.0,
               "infer_ms": round(infer_s * 1e3 / frames, 4) if frames else None, "backend": backend.name,
               "runtime_version": backend.version, "output": args.output, "jsonl": args.jsonl}
    if out is not None:
        out.write(kind="done", **summary)
        out.close()
    if not frames:
        raise AgentError(f"no frame could be read from {source}")
    sys.stderr.write(f"edgeyolo-agent: {frames} frames in {seconds:.2f} s: {summary['fps']:.1f} FPS "
                     f"(inference {summary['infer_ms']:.1f} ms per frame)\n")
    print(json.dumps(summary, sort_keys=True))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="edgeyolo-agent", description="edgeyolo's on-board agent")
    parser.add_argument("--version", action="version", version=f"edgeyolo-agent {AGENT_VERSION}")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="board state as JSON")
    info.add_argument("--workdir", default=".")
    info.add_argument("--engine", action="store_true", help="only the TensorRT version and GPU an engine is built for")
    for name in ("bench", "predict"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
        p.add_argument("--workdir", default=".")
        p.add_argument("--watchdog", type=float, default=0.0,
                       help="stop when stdin closes or carries no newline for this many seconds (0: off)")
    bench = sub.choices["bench"]
    bench.add_argument("--duration", type=float, default=30.0, help="timed seconds per phase")
    bench.add_argument("--warmup", type=float, default=3.0, help="untimed seconds before each phase")
    bench.add_argument("--streams", type=int, default=0, help="concurrent streams of the second phase (0: min(4, cpus))")
    bench.add_argument("--images", default=None, help="folder of images (default: seeded noise 640x480)")
    predict = sub.choices["predict"]
    predict.add_argument("--list", required=True, help="text file, one image path per line")
    predict.add_argument("--conf", type=float, default=None)
    predict.add_argument("--iou", type=float, default=None)
    predict.add_argument("--max-det", type=int, default=None)
    app = sub.add_parser("app", help="detect on a video, camera or GStreamer stream; draw or log the boxes")
    app.add_argument("--model", required=True)
    app.add_argument("--source", default=None, help="video file, camera index (0) or GStreamer pipeline (with appsink)")
    app.add_argument("--jetson-csi", action="store_true", help="read the Jetson CSI camera (nvarguscamerasrc)")
    app.add_argument("--sensor-id", type=int, default=0, help="with --jetson-csi: the CSI port")
    app.add_argument("--width", type=int, default=1280, help="with --jetson-csi: capture width")
    app.add_argument("--height", type=int, default=720, help="with --jetson-csi: capture height")
    app.add_argument("--fps", type=int, default=30, help="with --jetson-csi: capture frame rate")
    app.add_argument("--flip", type=int, default=0, help="with --jetson-csi: nvvidconv flip-method (0-7)")
    app.add_argument("--output", default=None, help="video with the boxes drawn (.mp4, .avi or .mkv)")
    app.add_argument("--jsonl", default=None, help="detections as JSON lines, one per frame")
    app.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    app.add_argument("--conf", type=float, default=None, help="score threshold (default: the model's contract)")
    app.add_argument("--iou", type=float, default=None)
    app.add_argument("--max-det", type=int, default=None)
    app.add_argument("--names", default=None, help="text file of class names, one per line, for the labels")
    app.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = parser.parse_args(argv)
    commands = {"info": cmd_info, "bench": cmd_bench, "predict": cmd_predict, "app": cmd_app}
    if args.command not in commands:
        parser.print_help(sys.stderr)
        return 2
    start_watchdog(getattr(args, "watchdog", 0.0))
    try:
        commands[args.command](args)
    except AgentError as exc:
        sys.stderr.write(f"edgeyolo-agent: error: {exc}\n")
        if args.command in ("bench", "predict", "app"):
            # a runtime's threads (onnxruntime, TensorRT) may still run: their teardown at interpreter
            # exit can abort the process, and exit code 3 would read as "killed by a signal"
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
