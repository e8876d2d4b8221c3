"""Compatibility shims for detectron2 0.6 on current PyTorch / Pillow, in one place.

Every shim is applied by an import hook at the moment detectron2 imports the module it
concerns, and only where the library needs it (table below): on a current detectron2 built
with its compiled ops, on a machine with CUDA, nothing is changed.

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
optimizer in checkpoints   detectron2 0.6: ``DefaultTrainer`` does     ``state_dict`` includes and
                           not save its ``SimpleTrainer``'s state      restores it as later
                           (the optimizer's momentum is lost on        versions do (``"_trainer"``)
                           ``--resume``)
multi-process launch on    detectron2 0.6 on a machine without CUDA:   ``launch`` starts its
CPU                        ``launch``'s workers assert CUDA and use    processes with the gloo
                           NCCL (later versions pick gloo themselves)  backend
DDP of a CPU model         detectron2 0.6 and later on a machine       ``create_ddp_model`` gives
                           without CUDA: ``create_ddp_model`` passes   CPU models
                           ``device_ids=[local rank]``, which          ``device_ids=None``
                           ``DistributedDataParallel`` rejects for
                           CPU models
CPU autocast query         torch < 2.4: ``torch.is_autocast_enabled``  :func:`cpu_autocast_enabled`
                           takes no device type (2.4 deprecates        answers on every version
                           ``is_autocast_cpu_enabled``)
=========================  ==========================================  =========================

The hook must be active before detectron2 is first imported, in any order of imports. The
environment set-up (``d2_edwpose/bootstrap_env.py``) therefore installs a ``.pth`` file that
calls :func:`install` at interpreter start-up; ``import d2_edwpose`` calls it too. This module
imports only the standard library at top level so that start-up stays cheap.
"""

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types

__all__ = [
    "Caffe2Unavailable",
    "CompiledOpUnavailable",
    "install",
    "has_compiled_ops",
    "cpu_autocast_enabled",
]

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


def _without_cuda():
    import torch

    return not torch.cuda.is_available()


def _always():
    return True


def _patch_engine_defaults(module):
    # detectron2 0.6's DefaultTrainer checkpoints only TrainerBase's state (iteration, hooks):
    # the optimizer of its SimpleTrainer is missing, so --resume restarts SGD momentum from
    # zero. Later versions define these two methods; save and restore it the same way.
    trainer_class = module.DefaultTrainer
    if "state_dict" not in vars(trainer_class):

        def state_dict(self):
            ret = super(trainer_class, self).state_dict()
            ret["_trainer"] = self._trainer.state_dict()
            return ret

        def load_state_dict(self, state_dict):
            super(trainer_class, self).load_state_dict(state_dict)
            if "_trainer" in state_dict:
                self._trainer.load_state_dict(state_dict["_trainer"])
            else:
                logging.getLogger(__name__).warning(
                    "The checkpoint has no optimizer state (written by detectron2 0.6 itself): "
                    "the resumed run's SGD momentum starts from zero."
                )

        for method in (state_dict, load_state_dict):
            method.__qualname__ = f"{trainer_class.__name__}.{method.__name__}"
            setattr(trainer_class, method.__name__, method)

    if _without_cuda():
        module.create_ddp_model = _ddp_for_cpu_models(module.create_ddp_model)


def _ddp_for_cpu_models(create_ddp_model):
    # DistributedDataParallel accepts device_ids only for single-device GPU modules;
    # create_ddp_model passes [local rank] whatever the device.
    @functools.wraps(create_ddp_model)
    def create_ddp_model_for_any_device(model, **kwargs):
        if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
            kwargs["device_ids"] = None
        return create_ddp_model(model, **kwargs)

    return create_ddp_model_for_any_device


# The assertion message of detectron2 0.6's CUDA-only launch worker.
_CUDA_ONLY_WORKER_MESSAGE = "cuda is not available. Please check your installation."


def _launch_on_cpu(module):
    # detectron2 0.6's _distributed_worker asserts CUDA and initialises NCCL; later versions
    # choose gloo themselves when there is no GPU (their worker has no such assertion).
    if _CUDA_ONLY_WORKER_MESSAGE in module._distributed_worker.__code__.co_consts:
        module._distributed_worker = _gloo_distributed_worker


def _gloo_distributed_worker(
    local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout
):
    """detectron2 0.6's ``launch`` worker for CPU processes: the gloo backend, no CUDA calls.

    Module-level, so that ``torch.multiprocessing.spawn`` can pickle it by reference.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    # The per-machine group behind comm.get_local_rank(), built as detectron2 0.6's launch does.
    for machine in range(world_size // num_gpus_per_machine):
        ranks = list(range(machine * num_gpus_per_machine, (machine + 1) * num_gpus_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)


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


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on (e.g. ``torch.autocast("cpu", torch.bfloat16)``)."""
    import torch

    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


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
    # Each of its patches checks on its own whether this detectron2 and machine need it.
    "detectron2.engine.defaults": _Shim(_always, after=_patch_engine_defaults),
    "detectron2.engine.launch": _Shim(_without_cuda, after=_launch_on_cpu),
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
