"""Set up the Python environment d2_edwpose runs in (used by ``make setup``).

Run it with the interpreter of the target environment: ``.venv/bin/python d2_edwpose/bootstrap_env.py``.
It uses only the standard library (detectron2 is not installed yet when it runs) and is
idempotent: what is already there is kept.

1. PyTorch: an importable torch >= 2.1 with torchvision is used as it is (GPU users bring their
   own CUDA build); otherwise torch==2.14.1 / torchvision==0.29.1 are installed.
2. detectron2: an importable detectron2 >= 0.6 is used untouched (e.g. one built from source,
   with its compiled ops). Otherwise detectron2 0.6 is built *Python-only* from PyPI's
   ``pb1-detectron2==0.6`` sdist, whose Python sources are those of the official v0.6 release but
   which ships without the C++/CUDA sources of ``detectron2._C``: the sdist is verified against a
   pinned sha256, and its ``detectron2`` package, the three projects its setup.py installs under
   ``detectron2.projects`` and the model-zoo configs are packaged as distribution ``detectron2``
   (version ``0.6+pythononly``) without the extension, without the stray top-level ``tools``
   package and without its pins of obsolete tools (black==21.4b2). Its runtime dependencies are
   listed here instead.
3. The start-up hook of :mod:`d2_edwpose.compat` (a ``.pth`` file), then this package, editable.
"""

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

TORCH_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]
MIN_TORCH = (2, 1)

DETECTRON2_SDIST = "pb1-detectron2==0.6"
DETECTRON2_SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
DETECTRON2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DETECTRON2_PYTHON_ONLY_VERSION = "0.6+pythononly"
# From detectron2 0.6's setup.py install_requires, without black (imported only by
# LazyConfig.save), future and pydot (caffe2 only).
DETECTRON2_RUNTIME_REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]
# detectron2 0.6 imports pkg_resources, which setuptools 81 removed.
# (>= 64: recursive globs in package_data and PEP 660 editable installs.)
# onnx, onnxruntime and openvino: ONNX export, INT8 quantization and the two runtimes of the
# runner (d2_edwpose/export/tracing.py, quantization.py, deploy/); trackers (Roboflow's, torch-free):
# the runner's and the demo's tracking, and its evaluation (deploy/tracking.py); pytest and
# import-linter: the tests, which check the package's import contracts (.importlinter).
PROJECT_REQUIREMENTS = [
    "setuptools>=64,<81", "opencv-python", "pytest", "import-linter>=2.1", "onnx",
    "onnxruntime", "openvino", "trackers==2.6.1",
]  # fmt: skip
# pip 26 refuses to even download a PyPI sdist whose metadata has a direct-URL dependency, and
# pb1-detectron2 declares one in an extra (panopticapi); an older pip only fetches the file.
SDIST_DOWNLOAD_PIP = "pip>=23,<26"
DETECTRON2_PROJECTS = {
    "point_rend": "projects/PointRend/point_rend",
    "deeplab": "projects/DeepLab/deeplab",
    "panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

# Executed by site at interpreter start-up: loads d2_edwpose/compat.py under its own name
# without importing the d2_edwpose package (which imports detectron2), then installs its hook.
# Once per interpreter: site may process a venv's site-packages twice (lib64 -> lib symlink).
STARTUP_HOOK_FILE = "d2_edwpose_detectron2_compat.pth"
STARTUP_HOOK_LINE = (
    "import importlib.util as u, os, sys; "
    "p = 'd2_edwpose.compat' not in sys.modules and u.find_spec('d2_edwpose'); "
    "c = p and p.submodule_search_locations and u.spec_from_file_location("
    "'d2_edwpose.compat', os.path.join(list(p.submodule_search_locations)[0], 'compat.py')); "
    "m = c and u.module_from_spec(c); "
    "c and (sys.modules.__setitem__('d2_edwpose.compat', m), c.loader.exec_module(m), m.install())\n"
)


def log(message):
    print(f"[bootstrap] {message}", flush=True)


def run(*args):
    subprocess.check_call([str(a) for a in args])


def pip(*args):
    run(sys.executable, "-m", "pip", *args)


def probe(code):
    """Output of ``code`` in a fresh interpreter of this environment, or None if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    return result.stdout.strip() if result.returncode == 0 else None


def version_tuple(version):
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def ensure_torch():
    found = probe("import torch, torchvision; print(torch.__version__)")
    if found and version_tuple(found) >= MIN_TORCH:
        log(f"using installed torch {found}")
        return
    torch_only = probe("import torch; print(torch.__version__)")
    if torch_only:
        # Never replace a user's (e.g. CUDA) torch behind their back.
        raise SystemExit(
            f"torch {torch_only} is installed but torchvision does not import, or torch is older "
            f"than {'.'.join(map(str, MIN_TORCH))}: install the torchvision that matches your torch "
            "(https://pytorch.org/get-started/locally/) and run the set-up again."
        )
    log(f"installing {' '.join(TORCH_REQUIREMENTS)}")
    pip("install", *TORCH_REQUIREMENTS)


def sha256_of(path):
    """The sha256 hex digest of the file ``path``, read in blocks (also the weights converter's
    check of a cached download)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_detectron2_sdist(cache_dir):
    sdist = cache_dir / DETECTRON2_SDIST_FILE
    if not sdist.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as pip_dir:
            pip("install", "--quiet", "--target", pip_dir, SDIST_DOWNLOAD_PIP)
            # The sdist's setup.py imports torch, hence no build isolation.
            subprocess.check_call(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", "--dest", str(cache_dir), DETECTRON2_SDIST],
                env={**os.environ, "PYTHONPATH": pip_dir},
            )
    actual = sha256_of(sdist)
    if actual != DETECTRON2_SDIST_SHA256:
        sdist.unlink()
        raise SystemExit(
            f"{sdist}: sha256 {actual} does not match the pinned {DETECTRON2_SDIST_SHA256}; "
            "the file was deleted. Refusing to install an unverified detectron2."
        )
    log(f"{sdist.name}: sha256 verified")
    return sdist


def python_only_setup_py():
    return textwrap.dedent(
        f"""\
        # Generated by d2_edwpose/bootstrap_env.py: detectron2 0.6 without its C++ extension.
        from setuptools import find_packages, setup

        setup(
            name="detectron2",
            version="{DETECTRON2_PYTHON_ONLY_VERSION}",
            packages=find_packages(include=["detectron2", "detectron2.*"]),
            package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
            python_requires=">=3.7",
        )
        """
    )


def build_python_only_detectron2(sdist, build_dir):
    with tarfile.open(sdist) as archive:
        # The "data" filter (no absolute paths, links out of the tree, ...) exists from Python
        # 3.12 and in security releases of 3.9-3.11; the sdist's sha256 is checked before.
        if hasattr(tarfile, "data_filter"):
            archive.extractall(build_dir, filter="data")
        else:
            archive.extractall(build_dir)
    (source,) = [p for p in build_dir.iterdir() if p.is_dir()]
    package = source / "detectron2"
    if (package / "layers" / "csrc").exists():
        raise SystemExit(f"{sdist} unexpectedly contains C++ sources; this builder expects none.")
    # Same layout as the sdist's setup.py package_dir: projects installed as detectron2.projects.*
    for name, project_dir in DETECTRON2_PROJECTS.items():
        (source / project_dir).rename(package / "projects" / name)
    (source / "setup.py").write_text(python_only_setup_py())
    (source / "setup.cfg").unlink()
    (source / "pyproject.toml").unlink(missing_ok=True)
    return source


def ensure_detectron2(cache_dir):
    found = probe("import detectron2; print(detectron2.__version__)")
    if found and version_tuple(found) >= (0, 6):
        log(f"using installed detectron2 {found}")
        return
    log("installing detectron2 0.6 (Python-only build)")
    pip("install", *DETECTRON2_RUNTIME_REQUIREMENTS)
    sdist = download_detectron2_sdist(cache_dir)
    with tempfile.TemporaryDirectory() as build_dir:
        source = build_python_only_detectron2(sdist, Path(build_dir))
        pip("install", "--no-deps", "--no-build-isolation", source)


def install_startup_hook():
    hook = Path(sysconfig.get_paths()["purelib"]) / STARTUP_HOOK_FILE
    if not hook.is_file() or hook.read_text() != STARTUP_HOOK_LINE:
        hook.write_text(STARTUP_HOOK_LINE)
        log(f"wrote {hook}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "d2_edwpose",
        help="where the detectron2 sdist is kept between runs",
    )
    args = parser.parse_args()
    if sys.prefix == sys.base_prefix and not importlib.util.find_spec("torch"):
        log("warning: not running in a virtual environment; installing into the system Python")
    ensure_torch()
    pip("install", *PROJECT_REQUIREMENTS)
    ensure_detectron2(args.cache_dir)
    install_startup_hook()
    pip("install", "--no-deps", "--no-build-isolation", "--editable", REPO_ROOT)
    version = probe("import d2_edwpose, detectron2; print(detectron2.__version__)")
    if version is None:
        raise SystemExit("set-up finished but 'import d2_edwpose' fails; see the output above")
    log(f"ready: detectron2 {version}")


if __name__ == "__main__":
    main()
