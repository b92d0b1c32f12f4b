"""The one piece every computing object shares: which kernel backend it calls."""

from __future__ import annotations

from types import SimpleNamespace

from scratchcnn.kernels import get_backend


class UsesBackend:
    """Holds a backend by name (``"serial"``, ``"parallel"``, ``"cuda"``) and its kernels."""

    _k: SimpleNamespace
    _backend_name: str

    @property
    def backend(self) -> str:
        """Name of the kernel backend this object calls."""
        return self._backend_name

    @backend.setter
    def backend(self, name: str) -> None:
        self._k = get_backend(name)
        self._backend_name = name
