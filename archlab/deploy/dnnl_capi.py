"""oneDNN's C API (``dnnl.h``), reached with ctypes: what :mod:`archlab.deploy.primitive_plan` runs a model with.

Why a second oneDNN. PyTorch links its own oneDNN statically and exports none of its C symbols, so the only way in
from PyTorch is one ATen op per layer (about 20 us of setup each) or TorchScript's oneDNN Graph bridge (14-26 us per
partition; docs/deployment.md section 2b). The ``onednn-cpu-gomp`` package is Intel's own build of the library as a
plain shared object (``libdnnl.so.3``, OpenMP threading, CPU only, no other dependency); through its C API a forward
pass is a fixed list of primitives executed back to back, with nothing else between them.

Why ctypes and not a compiled extension: nothing to build at install time (CI has no oneDNN headers), and the C API
is small and stable. The enum values below are ``dnnl_types.h`` of oneDNN v3.2 (the ``onednn-cpu-gomp==2023.2.0``
wheel); :func:`library` refuses another version, whose values may differ.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

VERSION = (3, 2)
PACKAGE = "onednn-cpu-gomp==2023.2.0"

# dnnl_data_type_t, dnnl_format_tag_t
F32, BF16 = 3, 2
TAG_ANY, TAG_A, TAG_AB, TAG_ABCD, TAG_ACDB, TAG_ABCDE = 1, 2, 3, 5, 22, 6
TAG_ABCD16B = 78  # nChw16c: channels in blocks of 16
# dnnl_prop_kind_t, dnnl_alg_kind_t
FORWARD_INFERENCE = 96
CONVOLUTION_DIRECT = 1
ELTWISE_RELU, ELTWISE_CLIP, ELTWISE_HARDSWISH, ELTWISE_SWISH, ELTWISE_LOGISTIC, ELTWISE_HARDSIGMOID = 32, 46, 52, 44, 41, 40
ELTWISE_GELU_TANH, ELTWISE_GELU_ERF = 43, 49
BINARY_ADD, BINARY_MUL = 131056, 131057
POOLING_MAX, POOLING_AVG_INCLUDE_PADDING, POOLING_AVG_EXCLUDE_PADDING = 511, 767, 1023
USE_GLOBAL_STATS, USE_SCALE, USE_SHIFT = 1, 2, 4  # batch normalization flags
REDUCTION_MEAN = 196598
# dnnl_query_t
QUERY_IMPL_INFO_STR, QUERY_SRC_MD, QUERY_WEIGHTS_MD, QUERY_DST_MD, QUERY_SCRATCHPAD_MD = 8, 129, 131, 133, 136
# execution argument indices (DNNL_ARG_*)
ARG_SRC, ARG_SRC_1, ARG_DST, ARG_WEIGHTS, ARG_BIAS, ARG_SCRATCHPAD = 1, 2, 17, 33, 41, 80
ARG_FROM, ARG_TO = ARG_SRC, ARG_DST
ARG_MULTIPLE_SRC, ARG_MEAN, ARG_VARIANCE, ARG_SCALE, ARG_SHIFT = 1024, 49, 50, 51, 52
SCRATCHPAD_MODE_USER = 1
MEMORY_ALLOCATE = ctypes.c_void_p(-1 % (1 << 64))  # DNNL_MEMORY_ALLOCATE: the library allocates the buffer


def arg_post_op(index: int) -> int:
    """DNNL_ARG_ATTR_MULTIPLE_POST_OP(index): the argument slot of post-op ``index``'s second input."""
    return 32768 * (index + 1)


Dims = ctypes.c_int64 * 12  # dnnl_dims_t (DNNL_MAX_NDIMS = 12)


class ExecArg(ctypes.Structure):
    """dnnl_exec_arg_t."""
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class DnnlError(RuntimeError):
    """A oneDNN call returned a status other than dnnl_success (the status is in the message)."""


class Unavailable(RuntimeError):
    """The oneDNN library this module needs is not installed (or is another version)."""


_NOT_STATUS = {"dnnl_version", "dnnl_memory_desc_get_size", "dnnl_memory_desc_equal", "dnnl_primitive_desc_query_md",
               "dnnl_get_effective_cpu_isa"}


def _candidates() -> list[str]:
    found = []
    for root in dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))]):
        found += sorted(glob.glob(os.path.join(root, "lib", "libdnnl.so.3.*")))
    return found


def _checked(name: str, function):
    def call(*args):
        status = function(*args)
        if status != 0:
            raise DnnlError(f"{name} returned status {status}")
        return status
    return call


class Library:
    """The loaded ``libdnnl.so.3``: each C function as an attribute (status-returning ones raise DnnlError), and
    the CPU engine and stream every plan uses."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dll = ctypes.CDLL(path)
        self.dll.dnnl_version.restype = ctypes.POINTER(_Version)
        version = self.dll.dnnl_version().contents
        self.version = (version.major, version.minor, version.patch)
        if self.version[:2] != VERSION:
            raise Unavailable(f"{path} is oneDNN v{'.'.join(map(str, self.version))}; this module reads the C API of "
                              f"v{VERSION[0]}.{VERSION[1]} (pip install {PACKAGE})")
        for name in ("dnnl_primitive_desc_query_md",):
            getattr(self.dll, name).restype = ctypes.c_void_p
        self.dll.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.dll.dnnl_memory_desc_equal.restype = ctypes.c_int
        # The one call on the hot path, declared so that ctypes passes plain integers without converting.
        self.execute = self.dll.dnnl_primitive_execute
        self.execute.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.execute.restype = ctypes.c_int
        self.engine = self.new("dnnl_engine_create", 1, ctypes.c_size_t(0))  # dnnl_cpu, index 0
        self.stream = self.new("dnnl_stream_create", ctypes.c_void_p(self.engine), 1)  # dnnl_stream_default_flags
        self.gomp = ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime this build of oneDNN runs its threads in

    def __getattr__(self, name: str):
        function = getattr(self.dll, name)
        wrapped = function if name in _NOT_STATUS else _checked(name, function)
        setattr(self, name, wrapped)  # looked up once
        return wrapped

    def new(self, name: str, *args) -> int:
        """Call a ``dnnl_*_create`` function whose first argument is the handle it creates; return the handle."""
        handle = ctypes.c_void_p()
        getattr(self, name)(ctypes.byref(handle), *args)
        return handle.value

    def set_threads(self, threads: int) -> None:
        """The number of OpenMP threads oneDNN runs on (for the calling thread's parallel regions)."""
        self.gomp.omp_set_num_threads(int(threads))

    def impl_name(self, primitive_desc: int) -> str:
        name = ctypes.c_char_p()
        self.dnnl_primitive_desc_query(ctypes.c_void_p(primitive_desc), QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
        return name.value.decode()


@functools.cache
def library() -> Library:
    """The oneDNN library, loaded once; :class:`Unavailable` (naming the package) where it is not installed."""
    paths = _candidates()
    if not paths:
        raise Unavailable(f"oneDNN's shared library (libdnnl.so.3) is not installed: pip install {PACKAGE} "
                          "(or pip install -e \".[deploy]\")")
    try:
        return Library(paths[-1])
    except OSError as error:  # e.g. no libgomp.so.1 on this system
        raise Unavailable(f"oneDNN's shared library did not load: {error}") from error


def available() -> bool:
    try:
        library()
    except Unavailable:
        return False
    return True


def dims(values) -> Dims:
    return Dims(*[int(v) for v in values])
