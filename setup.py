"""Build script for the optional C++ extension ``fastorals._C``.

The extension uses pybind11 only (no torch headers), so it builds with nothing but
setuptools + pybind11 and keeps working across torch upgrades.

Environment:
  FASTORALS_NO_EXT=1   skip the extension (pure Python/PyTorch install)
  FASTORALS_NATIVE=1   add -march=native (faster local builds; not for redistributed wheels)
  FASTORALS_DEBUG=1    -O0 -g
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _compiler_accepts(flags: list[str], link: list[str]) -> bool:
    """True when the C++ compiler builds and links a tiny OpenMP program with these flags."""
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    src = "#include <omp.h>\nint main(){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.cpp")
        with open(path, "w") as f:
            f.write(src)
        cmd = [*cxx.split(), *flags, path, "-o", os.path.join(d, "t"), *link]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _extensions():
    if _truthy("FASTORALS_NO_EXT"):
        print("fastorals: FASTORALS_NO_EXT=1, building without the C++ extension", file=sys.stderr)
        return []
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    compile_args = ["-O0", "-g"] if _truthy("FASTORALS_DEBUG") else ["-O3"]
    link_args: list[str] = []
    macros = []
    if sys.platform == "darwin":
        omp_c, omp_l = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    elif sys.platform == "win32":
        omp_c, omp_l = ["/openmp"], []
    else:
        omp_c, omp_l = ["-fopenmp"], ["-fopenmp"]
    if sys.platform != "win32" and _compiler_accepts(omp_c, omp_l):
        compile_args += omp_c
        link_args += omp_l
        macros.append(("FASTORALS_OPENMP", "1"))
    else:
        print("fastorals: compiler has no OpenMP; the extension will run single-threaded", file=sys.stderr)
    if _truthy("FASTORALS_NATIVE"):
        compile_args.append("-march=native")
    if sys.platform != "win32":
        compile_args += ["-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    return [
        Pybind11Extension(
            "fastorals._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=macros,
        )
    ]


class _build_py_no_ext(build_py):
    """build_py that drops a compiled ``_C`` left in the tree or in build/ by an earlier build,
    so a FASTORALS_NO_EXT=1 wheel really has no extension."""

    def run(self) -> None:
        super().run()
        for path in glob.glob(os.path.join(self.build_lib, "fastorals", "_C*")):
            print(f"fastorals: FASTORALS_NO_EXT=1, leaving out {path}", file=sys.stderr)
            os.remove(path)


if _truthy("FASTORALS_NO_EXT"):
    setup(ext_modules=[], cmdclass={"build_py": _build_py_no_ext})
else:
    from pybind11.setup_helpers import ParallelCompile, build_ext

    # compile the sources of the one extension in parallel (FASTORALS_BUILD_JOBS, default: all cores)
    ParallelCompile("FASTORALS_BUILD_JOBS", default=0).install()
    setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
