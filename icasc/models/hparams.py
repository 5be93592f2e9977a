"""Hyper-parameters as plain data, so checkpoints load with ``torch.load(weights_only=True)``.

Lightning stores a module's constructor arguments in every checkpoint. Objects there (Hydra's DictConfig,
a loss object, an optimiser ``functools.partial``) make the file a pickle that only an unrestricted, unsafe
``torch.load`` can read. The module records them instead as dicts, lists, strings and numbers: a loss as its
``config()``, an optimiser or scheduler factory as ``{"target": "<module>.<Class>", "kwargs": {...}}``.
The factories are rebuilt only from classes of the expected kind (an ``Optimizer``, an LR scheduler).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["build_factory", "factory_spec", "plain"]


def plain(value: Any) -> Any:
    """``value`` with every Mapping/DictConfig as a ``dict`` and every list/tuple/ListConfig as a ``list``."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def factory_spec(factory: Callable[..., Any] | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The plain record of an optimiser/scheduler factory.

    Args:
        factory: ``None`` or an empty mapping (no factory), a record made by this function, or a
            ``functools.partial`` of a class with keyword arguments only (what Hydra's ``_partial_: true``
            gives). Anything else (a lambda, positional arguments) cannot be recorded as data: it is stored as
            ``{"target": None, "repr": ...}`` and a module loaded from that checkpoint must be given the
            factory again to train.

    Returns:
        ``None`` or ``{"target": "<module>.<qualname>", "kwargs": {...}}``.
    """
    if factory is None or (isinstance(factory, Mapping | DictConfig) and not factory):
        return None  # an empty mapping is what an empty Hydra config (e.g. model/scheduler=none) composes to
    if isinstance(factory, Mapping | DictConfig):
        spec = plain(factory)
        if set(spec) - {"target", "kwargs", "repr"} or "target" not in spec:
            raise ValueError(
                "a factory record needs 'target' and 'kwargs' (as factory_spec writes it), "
                f"got keys {sorted(spec)}"
            )
        return spec
    func = factory.func if isinstance(factory, functools.partial) else None
    if isinstance(func, type) and not factory.args:
        return {"target": f"{func.__module__}.{func.__qualname__}", "kwargs": plain(factory.keywords)}
    return {"target": None, "repr": repr(factory)}


def build_factory(spec: Mapping[str, Any], base: type, option: str) -> Callable[..., Any]:
    """The factory a :func:`factory_spec` record describes; its class must subclass ``base``.

    Args:
        spec: ``{"target": "<module>.<Class>", "kwargs": {...}}``.
        base: The kind of class allowed (e.g. ``torch.optim.Optimizer``); anything else is refused, so a
            checkpoint cannot make the loader call an arbitrary function.
        option: The constructor argument, for messages (``optimizer``, ``scheduler``).

    Raises:
        ValueError: The record names no class (the factory was not plain data), an unknown class, or a class
            that is not a ``base``.
    """
    target = spec.get("target")
    if not target:
        raise ValueError(
            f"the checkpoint records {option} as {spec.get('repr')!r}, which is not plain data and cannot be "
            f"rebuilt; pass {option}= to load_from_checkpoint "
            "(e.g. functools.partial(torch.optim.SGD, lr=0.1))"
        )
    module_name, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{option}: cannot import {target!r} recorded in the checkpoint ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{option}: {target!r} is not a {base.__module__}.{base.__qualname__}; refused")
    return functools.partial(cls, **dict(spec.get("kwargs") or {}))
