"""``fastorals.info()``: what is live in this process and why."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from . import _ext
from ._version import __version__


@dataclass
class Info:
    """Snapshot of the runtime: versions, extension, threads, Triton, CUDA, backend."""

    version: str
    torch_version: str
    python: str
    extension_loaded: bool
    extension_error: Optional[str]
    extension_topics: list[str] = field(default_factory=list)
    compiler: Optional[str] = None
    simd: list[str] = field(default_factory=list)
    openmp: bool = False
    openmp_threads: int = 0
    torch_threads: int = 0
    triton_importable: bool = False
    triton_version: Optional[str] = None
    triton_error: Optional[str] = None
    triton_interpret: bool = False
    cuda_available: bool = False
    cuda_device: Optional[str] = None
    backend_requested: str = "auto"
    backend_cpu: str = "reference"
    backend_cuda: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ext = "loaded" if self.extension_loaded else f"NOT loaded ({self.extension_error})"
        if self.extension_loaded:
            ext += f" [{self.compiler}; simd: {', '.join(self.simd) or 'baseline'}; topics: {', '.join(self.extension_topics) or 'none'}]"
        omp = f"yes, {self.openmp_threads} threads" if self.openmp else "no (single-threaded kernels)"
        if self.triton_importable:
            tri = f"{self.triton_version}" + (" (TRITON_INTERPRET=1: kernels run on CPU)" if self.triton_interpret else "")
        else:
            tri = f"no ({self.triton_error})"
        cuda = self.cuda_device if self.cuda_available else "none"
        rows = [
            ("fastorals", self.version),
            ("torch", f"{self.torch_version} ({self.torch_threads} threads)"),
            ("python", self.python),
            ("extension", ext),
            ("OpenMP", omp),
            ("Triton", tri),
            ("CUDA device", cuda),
            ("backend", f"requested {self.backend_requested}; CPU -> {self.backend_cpu}"
             + (f"; CUDA -> {self.backend_cuda}" if self.backend_cuda else "")),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}} : {v}" for k, v in rows)


def info(print_it: bool = True) -> Info:
    """Return (and by default print) what fastorals can use in this process.

    Example:
        >>> i = fastorals.info(print_it=False)
        >>> i.extension_loaded, i.openmp_threads
        (True, 2)
    """
    C = _ext._C
    tri_ok, tri_err = _ext.triton_status()
    tri_ver = None
    if tri_ok:
        import triton

        tri_ver = getattr(triton, "__version__", "unknown")
    cuda = torch.cuda.is_available()
    try:
        requested = _ext.requested_backend()
        req_err = None
    except _ext.BackendUnavailableError as exc:
        requested, req_err = os.environ.get("FASTORALS_BACKEND", "?"), str(exc)
    generic = ("triton", "cpp", "torch", "reference")

    def effective(device: torch.device) -> str:
        if req_err:
            return f"error: {req_err}"
        try:
            return _ext.select_backend("info", device, generic)
        except _ext.BackendUnavailableError as exc:
            return f"unavailable ({exc})"

    result = Info(
        version=__version__,
        torch_version=torch.__version__,
        python=platform.python_version(),
        extension_loaded=C is not None,
        extension_error=_ext.EXT_ERROR,
        extension_topics=list(getattr(C, "topics", [])) if C is not None else [],
        compiler=C.compiler() if C is not None else None,
        simd=list(C.simd()) if C is not None else [],
        openmp=bool(C.has_openmp()) if C is not None else False,
        openmp_threads=int(C.max_threads()) if C is not None else 0,
        torch_threads=torch.get_num_threads(),
        triton_importable=tri_ok,
        triton_version=tri_ver,
        triton_error=tri_err,
        triton_interpret=_ext.triton_interpret(),
        cuda_available=cuda,
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
        backend_requested=requested,
        backend_cpu=effective(torch.device("cpu")),
        backend_cuda=effective(torch.device("cuda")) if cuda else None,
    )
    if print_it:
        print(result)
    return result
