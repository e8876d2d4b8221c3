"""The exported graph on a CPU runtime: OpenVINO or onnxruntime, behind one interface.

Each runtime is imported only when a graph is loaded on it: one of them is enough, and the
exporter, which imports the runner's constants, needs neither.
"""
import importlib.util
import warnings

from .export_contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportedModelError

__all__ = ["PRECISIONS", "RUNTIMES", "available_runtimes", "cpu_supports_bf16", "load_graph"]

# In the order of preference when both are installed: OpenVINO runs bfloat16 and INT8 graphs,
# onnxruntime neither fast (docs/deploy.md has the measurements).
RUNTIMES = ("openvino", "onnxruntime")
# Of the float operations.
PRECISIONS = ("fp32", "bf16")


def available_runtimes():
    """The installed runtimes, fastest first (see ``RUNTIMES``)."""
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def cpu_supports_bf16():
    """Whether OpenVINO computes in bfloat16 natively on this CPU (AVX-512 BF16 or AMX)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _OnnxruntimeGraph:
    """The graph on onnxruntime's CPU provider."""

    def __init__(self, path, num_threads, precision):
        import onnxruntime

        if precision != "fp32":
            raise ValueError(
                f"precision={precision!r} runs on OpenVINO only (onnxruntime's CPU provider has "
                "no bfloat16 kernels): use runtime='openvino'"
            )
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
        # onnxruntime raises its own exception types, subclasses of Exception only.
        except Exception as e:
            raise ExportedModelError(
                f"{path}: onnxruntime cannot load this file as an ONNX model (corrupt or "
                f"truncated?): {e}"
            ) from e
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        types = {"tensor(float)": "float32"}
        self.inputs = [
            (i.name, i.shape, types.get(i.type, i.type)) for i in self.session.get_inputs()
        ]
        self.outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.precision = precision

    def __call__(self, graph_input):
        outputs = self.session.run(OUTPUT_NAMES, {INPUT_NAME: graph_input})
        return dict(zip(OUTPUT_NAMES, outputs))


class _OpenVINOGraph:
    """The graph compiled by OpenVINO for the CPU, its float operations at ``precision``."""

    def __init__(self, path, num_threads, precision):
        import openvino

        core = openvino.Core()
        try:
            model = core.read_model(path)
        except RuntimeError as e:
            raise ExportedModelError(
                f"{path}: OpenVINO cannot load this file as an ONNX model (corrupt or "
                f"truncated?): {e}"
            ) from e
        # OpenVINO keeps an ONNX file's metadata in its runtime info, under "framework".
        self.metadata = {
            key: model.get_rt_info(["framework", key]).astype(str)
            for key in [METADATA_KEY]
            if model.has_rt_info(["framework", key])
        }
        if precision == "bf16" and not cpu_supports_bf16():
            warnings.warn(
                "bf16 requested, but this CPU computes no bfloat16 natively (it needs AVX-512 "
                "BF16 or AMX): running in float32",
                RuntimeWarning,
                stacklevel=4,
            )
            precision = "fp32"
        # Explicit, as OpenVINO's default on a CPU with bfloat16 is bfloat16.
        config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads
        compiled = core.compile_model(model, "CPU", config)
        self.request = compiled.create_infer_request()
        self.precision = precision

        def shape(port):
            return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

        def name(port):  # a port has several names in a compiled model: the graph's among them
            names = port.get_names()
            return next((n for n in (INPUT_NAME, *OUTPUT_NAMES) if n in names), port.get_any_name())

        self.inputs = [
            (name(port), shape(port), port.get_element_type().to_dtype().name)
            for port in model.inputs
        ]
        self.outputs = {name(port): shape(port) for port in model.outputs}
        self._output_ports = {name(port): port for port in compiled.outputs}

    def __call__(self, graph_input):
        results = self.request.infer({INPUT_NAME: graph_input})
        return {name: results[self._output_ports[name]] for name in OUTPUT_NAMES}


_GRAPHS = {"openvino": _OpenVINOGraph, "onnxruntime": _OnnxruntimeGraph}


def load_graph(path, num_threads=None, runtime=None, precision="fp32"):
    """The ONNX file ``path`` loaded on ``runtime`` (None: the first installed of ``RUNTIMES``),
    as a callable from the graph's input to its outputs by name, with the file's ``metadata``,
    the graph's ``inputs`` and ``outputs``, the ``runtime`` and the ``precision`` it runs at."""
    installed = available_runtimes()
    runtime = runtime or (installed[0] if installed else RUNTIMES[-1])
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: expected one of {RUNTIMES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if runtime not in installed:
        raise ModuleNotFoundError(f"runtime={runtime!r} is not installed: pip install {runtime}")
    graph = _GRAPHS[runtime](path, num_threads, precision)
    graph.runtime = runtime
    return graph
