"""Compile each kernel's machine code once: defer LLVM's work on a Numba code library
until something needs that library's machine code.

Why. Numba finalizes every *code library* it builds -- links in the libraries it
calls, runs LLVM's module optimizer over the result and generates machine code for
it -- as soon as the library is complete. A ``parallel=True`` kernel is built as a
chain of libraries, each linking in the one before: the ``prange`` body (a
"gufunc"), two wrappers around it that Numba generates, and the kernel itself. Each
link holds the whole body, so the body was optimized and turned into machine code
four times; only the last copy ever runs (the others are only linked into the next).
Helpers called from kernels likewise got machine code of their own, and were
optimized again in every kernel that links them.

What changes. ``enable()`` replaces ``CPUCodeLibrary.finalize`` by one that links and
checks the module as before but leaves optimization and machine code for later; the
first request for the library's machine code (a function pointer: a call from
Python; its object code: the on-disk cache; its assembly) runs them, exactly as
Numba would have. A library that is only ever linked into another is optimized as
part of that one and never turned into machine code on its own. A ``prange`` body is
compiled without an entry point from Python (nothing calls it from Python).
``defer_helpers()``, for compile workers only, does the same for the kernels'
helpers (their entry point from Python becomes a stub; see there).
``python bench/compile_profile.py --step --variant NUMBA_OPT=2 --variant 'NUMBA_OPT=2
SCRATCHCNN_LAZY_LLVM=1'`` measures ``enable()``; docs/results/compile_profile.md.

What does not change. The kernel that runs, and the one written to the cache, went
through the same optimizer at the same level, over the same IR; without fast-math
LLVM may not change float results at any level, so the bits are those of a normal
compile (``tests/test_fingerprint.py`` runs with ``enable()`` on; the CLI test of
``--cold-start`` compares a run on worker-compiled kernels with one on the suite's).
Only the number of times each piece is optimized changes.

Safety. This replaces Numba internals. ``enable()`` applies only when the functions
it replaces or relies on are the ones it was written against (their source hashes
below: Numba 0.68), and otherwise leaves Numba alone and returns False -- the
compile is then as slow as before, never wrong. It is used where only our kernels
are compiled: the cache-filling worker processes of ``scratchcnn.warmup``
(``SCRATCHCNN_LAZY_LLVM=0`` turns it off there), the benchmarks that measure it,
and the test suite.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import weakref

#: sha256 (first 16 hex digits) of the source of each Numba function this module replaces
#: or relies on, per checked Numba version (``python -m scratchcnn.lazy_llvm`` prints them).
KNOWN_SOURCES = {
    "0.68": {
        "CPUCodeLibrary.finalize": "4b4c34b83488a72f",
        "CPUContext.get_executable": "3892c8a654a2ca69",
        "CPUCodeLibrary._finalize_final_module": "95bbf4fcbb90ed99",
        "parfor_lowering._create_gufunc_for_parfor_body": "82b8b3f21ceffc85",
        "parfor_lowering.call_parallel_gufunc": "9064dd487dde5ad8",
    },
}

_enabled = False


def _replaced():
    """The Numba functions whose behaviour this module relies on, by name."""
    from numba.core.codegen import CPUCodeLibrary
    from numba.core.cpu import CPUContext
    from numba.parfors import parfor_lowering

    return {"CPUCodeLibrary.finalize": CPUCodeLibrary.finalize,
            "CPUContext.get_executable": CPUContext.get_executable,
            "CPUCodeLibrary._finalize_final_module": CPUCodeLibrary._finalize_final_module,
            "parfor_lowering._create_gufunc_for_parfor_body":
                parfor_lowering._create_gufunc_for_parfor_body,
            "parfor_lowering.call_parallel_gufunc": parfor_lowering.call_parallel_gufunc}


def _source_hashes() -> dict[str, str]:
    return {name: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
            for name, fn in _replaced().items()}


def supported() -> bool:
    """Whether this Numba's functions that this module replaces or relies on are the ones
    it was written for (True once ``enable()`` has replaced them)."""
    if _enabled:
        return True
    try:
        here = _source_hashes()
    except (OSError, TypeError, AttributeError, ImportError):
        return False
    return here in KNOWN_SOURCES.values()


def _finalize(self) -> None:
    """``CPUCodeLibrary.finalize`` without the optimization and code generation (see
    ``_materialize``); otherwise Numba 0.68's steps in Numba's order."""
    from numba.core.codegen import require_global_compiler_lock

    require_global_compiler_lock()
    self._codegen._check_llvm_bugs()
    self._raise_if_finalized()
    seen = set()
    for library in self._linking_libraries:
        if library not in seen:
            self._reload_init.update(library._reload_init)
            seen.add(library)
            self._final_module.link_in(library._get_module_for_linking(), preserve=True)
    self._final_module.verify()
    self._finalize_dynamic_globals()
    self._verify_declare_only_symbols()
    self._lazy_pending = True
    self._finalized = True


def _materialize(self) -> None:
    """The deferred rest of ``finalize``: optimize the linked module, hand it to the JIT
    (machine code; the object-cache hook keeps the object code for the on-disk cache)."""
    if not getattr(self, "_lazy_pending", False):
        return
    self._lazy_pending = False
    self._optimize_final_module()
    self._final_module.verify()
    self._shared_module = None  # a later link takes the optimized module
    # What Numba's _finalize_final_module sets (name-mangled there): lets the JIT's
    # object-cache hook find the library whose object code it just made.
    self._final_module._CPUCodeLibrary__library = weakref.proxy(self)
    cleanup = self._codegen._add_module(self._final_module)
    if cleanup:
        weakref.finalize(self, cleanup)
    self._finalize_specific()


def _materializing(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._ensure_finalized()
        _materialize(self)
        return method(self, *args, **kwargs)

    return wrapper


def _no_entry_point_for_prange_bodies(compile_ir):
    """``numba.core.compiler.compile_ir`` that compiles a ``prange`` body (the gufunc of
    parfor lowering) without an entry point callable from Python: nothing calls it
    from Python -- the wrappers link it by name -- so its library need not become
    machine code of its own (Numba's ``no_compile`` flag skips only that request)."""
    def wrapper(*args, pipeline_class=None, **kwargs):
        if getattr(pipeline_class, "__name__", "") == "ParforGufuncCompiler":
            args = list(args)
            flags = args[5].copy()  # compile_ir(typingctx, targetctx, func_ir, args,
            flags.no_compile = True  #            return_type, flags, locals, ...)
            args[5] = flags
        if pipeline_class is not None:
            kwargs["pipeline_class"] = pipeline_class
        return compile_ir(*args, **kwargs)

    return functools.wraps(compile_ir)(wrapper)


def enable() -> bool:
    """Defer each library's optimization and machine code until needed (in this process,
    from now on). True if applied (or already), False if this Numba is not one it knows."""
    global _enabled
    if _enabled:
        return True
    if not supported():
        return False
    from numba.core import codegen, compiler

    codegen.CPUCodeLibrary.finalize = _finalize
    compiler.compile_ir = _no_entry_point_for_prange_bodies(compiler.compile_ir)
    for cls, name in ((codegen.JITCodeLibrary, "get_pointer_to_function"),
                      (codegen.CPUCodeLibrary, "_get_compiled_object"),
                      (codegen.CPUCodeLibrary, "get_llvm_str"),
                      (codegen.CPUCodeLibrary, "get_asm_str"),
                      (codegen.CPUCodeLibrary, "get_function_cfg")):
        setattr(cls, name, _materializing(getattr(cls, name)))
    _enabled = True
    return True


def defer_helpers(helpers: list) -> bool:
    """In a compile worker only (it must never call these from Python): compile the
    dispatchers ``helpers`` -- functions only ever called from other jitted code --
    without machine code of their own and without caching them.

    Numba asks for a Python-callable entry point of every function it compiles through
    a dispatcher, so each helper was optimized and turned into machine code on its
    own, and again inside every kernel that links it. Here the entry point is a stub
    (a jitted function that takes no arguments: calling a helper from Python raises a
    TypeError instead of running it), so the helper's library stays lazy and is
    optimized only as part of the kernels. Not cached either: a kernel's cache entry
    holds the helpers it links. Needs ``enable()``; returns whether applied."""
    if not enable():
        return False
    import numba
    from numba import _dynfunc
    from numba.core import cpu
    from numba.core.caching import NullCache

    @numba.njit
    def not_callable_here():
        return 0

    not_callable_here.compile(())
    stub = not_callable_here.overloads[()]
    stub_ptr = stub.library.get_pointer_to_function(stub.fndesc.llvm_cpython_wrapper_name)
    names = {(d.py_func.__module__, d.py_func.__qualname__) for d in helpers}
    for d in helpers:
        d._cache = NullCache()
    original = cpu.CPUContext.get_executable

    def get_executable(self, library, fndesc, env):
        if (fndesc.modname, fndesc.qualname) not in names:
            return original(self, library, fndesc, env)
        # A new function object per compiled helper (Numba files each one's
        # implementation under it), running the stub's code with the stub's environment.
        return _dynfunc.make_function(fndesc.lookup_module(), fndesc.qualname.split(".")[-1],
                                      "not callable in a compile worker", stub_ptr,
                                      stub.environment, (stub.library,))

    cpu.CPUContext.get_executable = get_executable
    return True


def enable_from_env(default: bool) -> bool:
    """``enable()`` unless ``SCRATCHCNN_LAZY_LLVM`` says 0 (or, with ``default`` False,
    unless it says 1). Returns whether it is on."""
    want = os.environ.get("SCRATCHCNN_LAZY_LLVM", "1" if default else "0") != "0"
    return enable() if want else False


if __name__ == "__main__":
    import numba

    print(numba.__version__, _source_hashes(), "supported:", supported())
