"""Compatibility shims for detectron2 0.6 on current PyTorch / Pillow, in one place.

Every shim is applied by an import hook at the moment detectron2 imports the module it
concerns, and only when the library needs it: with a full detectron2 build (compiled
``detectron2._C``) and a Pillow that still has ``Image.LINEAR`` nothing is changed.

=========================  ==========================================  =========================
shim                       needed by                                   effect
=========================  ==========================================  =========================
``_C`` stand-in            a Python-only build (no compiled ops),      imports succeed; calling a
                           e.g. detectron2 0.6 built from the          compiled-only op raises
                           ``pb1-detectron2`` sdist                    :class:`CompiledOpUnavailable`
rotated NMS                same; 0.6 calls ``torch.ops.detectron2``    same clear error
official COCO evaluation   same; the fast evaluator is compiled code   pycocotools' ``COCOeval``
``PIL.Image.LINEAR``       detectron2 0.6 with Pillow >= 10            alias of ``BILINEAR``
                           (the alias was removed in Pillow 10.0)      restored
Caffe2 export API          detectron2 0.6 with torch >= 2.0 (no        ``import detectron2.export``
                           caffe2): ``detectron2/export/api.py``       works; the Caffe2 entry
                           imports caffe2                              points raise
                                                                       :class:`Caffe2Unavailable`
=========================  ==========================================  =========================

The hook must be active before detectron2 is first imported, in any order of imports. The
environment set-up (``d2_edwpose/bootstrap_env.py``) therefore installs a ``.pth`` file that
calls :func:`install` at interpreter start-up; ``import d2_edwpose`` calls it too. This module
imports only the standard library at top level so that start-up stays cheap.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["Caffe2Unavailable", "CompiledOpUnavailable", "install", "has_compiled_ops"]

BUILD_FROM_SOURCE_HINT = (
    "This detectron2 is a Python-only build without its compiled extension detectron2._C. "
    "To use this op, build detectron2 from source with a C++ compiler (and CUDA for GPU ops): "
    "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
    "(see https://detectron2.readthedocs.io/en/latest/tutorials/install.html)."
)

# Attribute of detectron2._C -> the user-facing op that needs it.
_COMPILED_OPS = {
    "deform_conv_forward": "DeformConv",
    "deform_conv_backward_input": "DeformConv",
    "deform_conv_backward_filter": "DeformConv",
    "modulated_deform_conv_forward": "ModulatedDeformConv",
    "modulated_deform_conv_backward": "ModulatedDeformConv",
    "roi_align_rotated_forward": "ROIAlignRotated",
    "roi_align_rotated_backward": "ROIAlignRotated",
    "box_iou_rotated": "pairwise_iou_rotated (rotated-box IoU)",
    "nms_rotated": "nms_rotated (rotated-box NMS)",
    "InstanceAnnotation": "COCOeval_opt (fast COCO evaluation)",
    "COCOevalEvaluateImages": "COCOeval_opt (fast COCO evaluation)",
    "COCOevalAccumulate": "COCOeval_opt (fast COCO evaluation)",
}

_PYTHON_ONLY_MODULE_NAME = "detectron2._C"


class CompiledOpUnavailable(RuntimeError):
    """A detectron2 op that exists only in the compiled extension was called."""

    def __init__(self, op_name):
        super().__init__(f"detectron2 op '{op_name}' is not available. {BUILD_FROM_SOURCE_HINT}")
        self.op_name = op_name


def _python_only_extension():
    """A module standing in for ``detectron2._C``: importing it works, using an op raises."""
    module = types.ModuleType(_PYTHON_ONLY_MODULE_NAME)
    module.__doc__ = "Stand-in for detectron2's compiled extension (Python-only build)."
    module.__file__ = __file__
    module.PYTHON_ONLY = True
    # detectron2.utils.collect_env reports these; say what this build is.
    module.get_compiler_version = lambda: "none (Python-only build)"
    module.get_cuda_version = lambda: "none (Python-only build)"
    module.has_cuda = lambda: False

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise CompiledOpUnavailable(_COMPILED_OPS.get(name, name))

    module.__getattr__ = __getattr__
    return module


def has_compiled_ops():
    """True when detectron2's compiled extension is importable."""
    import detectron2._C as extension

    return not getattr(extension, "PYTHON_ONLY", False)


def _restore_pil_linear():
    # Pillow 10.0 removed Image.LINEAR (an alias of BILINEAR); detectron2 0.6 reads it in
    # detectron2/data/transforms/transform.py when the module is executed.
    from PIL import Image

    Image.LINEAR = Image.BILINEAR


def _patch_rotated_nms(module):
    # detectron2 0.6 dispatches rotated NMS through torch.ops.detectron2, registered by _C.
    def nms_rotated(boxes, scores, iou_threshold):
        raise CompiledOpUnavailable("nms_rotated (rotated-box NMS)")

    nms_rotated.__doc__ = module.nms_rotated.__doc__
    module.nms_rotated = nms_rotated


def _patch_coco_evaluation(module):
    # The fast evaluator (COCOeval_opt) is compiled code; pycocotools' COCOeval is the
    # reference implementation it reproduces. Make it the default and the fallback.
    from pycocotools.cocoeval import COCOeval

    module.COCOeval_opt = COCOeval
    module.COCOEvaluator.__init__.__kwdefaults__["use_fast_impl"] = False


class Caffe2Unavailable(RuntimeError):
    """A Caffe2 export API of detectron2 was used with a PyTorch that has no caffe2."""


def _caffe2_export_stand_in(module):
    # detectron2 0.6's detectron2/export/api.py imports caffe2 at the top, which PyTorch stopped
    # shipping (2.0), so `import detectron2.export` -- and with it TracingAdapter and
    # detectron2.utils.analysis -- fails. Only its Caffe2 entry points need caffe2.
    def unavailable(name):
        def raise_unavailable(*args, **kwargs):
            raise Caffe2Unavailable(
                f"detectron2.export.{name} exports to Caffe2, which this PyTorch does not ship. "
                "Use detectron2.export.TracingAdapter with torch.onnx.export or torch.jit.trace."
            )

        raise_unavailable.__name__ = name
        return raise_unavailable

    module.__all__ = [
        "add_export_config",
        "export_caffe2_model",
        "Caffe2Model",
        "export_onnx_model",
        "Caffe2Tracer",
    ]
    for name in module.__all__:
        setattr(module, name, unavailable(name))


def _without_caffe2():
    return importlib.util.find_spec("caffe2") is None


class _Shim:
    """What to do when detectron2 imports one module, and when it is needed at all.

    ``before()`` runs before the module executes, ``after(module)`` after it; a
    ``stand_in(module)`` fills an empty module instead of executing the library's code.
    """

    def __init__(self, needed, before=None, after=None, stand_in=None):
        self.needed = needed
        self.before = before
        self.after = after
        self.stand_in = stand_in


def _pil_lacks_linear():
    from PIL import Image

    return not hasattr(Image, "LINEAR")


# Keyed by the module of detectron2 0.6 that needs the shim. ``_PYTHON_ONLY`` is resolved by
# the finder (no compiled detectron2._C next to the imported detectron2 package).
_PYTHON_ONLY = object()
_SHIMS = {
    "detectron2.data.transforms.transform": _Shim(_pil_lacks_linear, before=_restore_pil_linear),
    "detectron2.layers.nms": _Shim(_PYTHON_ONLY, after=_patch_rotated_nms),
    "detectron2.evaluation.coco_evaluation": _Shim(_PYTHON_ONLY, after=_patch_coco_evaluation),
    "detectron2.export.api": _Shim(_without_caffe2, stand_in=_caffe2_export_stand_in),
}


class _ShimLoader(importlib.abc.Loader):
    def __init__(self, loader, shim):
        self._loader = loader
        self._shim = shim

    def __getattr__(self, name):
        # get_source, get_filename, ... keep working for inspect, linecache and TorchScript.
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self._shim.stand_in is not None:
            self._shim.stand_in(module)
            return
        if self._shim.before is not None:
            self._shim.before()
        self._loader.exec_module(module)
        if self._shim.after is not None:
            self._shim.after(module)


class _PythonOnlyExtensionLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return _python_only_extension()

    def exec_module(self, module):
        pass


class _Detectron2CompatFinder(importlib.abc.MetaPathFinder):
    """Applies the shims above while detectron2 imports; a no-op for every other module."""

    def __init__(self):
        self._python_only = None

    def _is_python_only(self):
        if self._python_only is None:
            detectron2 = sys.modules.get("detectron2")
            search_path = getattr(detectron2, "__path__", None)
            spec = importlib.machinery.PathFinder.find_spec(_PYTHON_ONLY_MODULE_NAME, search_path)
            self._python_only = spec is None
        return self._python_only

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("detectron2."):
            return None
        if fullname == _PYTHON_ONLY_MODULE_NAME:
            if self._is_python_only():
                return importlib.util.spec_from_loader(fullname, _PythonOnlyExtensionLoader())
            return None
        shim = _SHIMS.get(fullname)
        if shim is None:
            return None
        needed = self._is_python_only() if shim.needed is _PYTHON_ONLY else shim.needed()
        if not needed:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ShimLoader(spec.loader, shim)
        return spec


def install():
    """Register the import hook once per interpreter. Safe to call repeatedly."""
    if any(isinstance(finder, _Detectron2CompatFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _Detectron2CompatFinder())
