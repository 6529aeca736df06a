"""Task families: one class per ``task.kind``, found through a registry.

Built in: ``classification`` and ``regression`` of a subject label, ``task_state`` (the condition of each
clip of task runs), ``image_retrieval`` and ``reidentification``. A family is a
:class:`~neurostorm.tasks.base.TaskFamily`; :func:`task_family` returns the one a configuration names.

Another package adds a family without touching this one, either by calling :func:`register_task` when it is
imported, or through the entry-point group ``neurostorm.tasks`` in its ``pyproject.toml``::

    [project.entry-points."neurostorm.tasks"]
    my_phenotype = "my_package.tasks:MyPhenotype"

Entry points are loaded on the first lookup; one that fails to import is reported by name in a warning and
the others stay available.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

from neurostorm.errors import InputError
from neurostorm.tasks.base import TaskFamily
from neurostorm.tasks.classification import Classification
from neurostorm.tasks.image_retrieval import ImageRetrieval
from neurostorm.tasks.regression import Regression
from neurostorm.tasks.reidentification import Reidentification
from neurostorm.tasks.task_state import TaskState

ENTRY_POINT_GROUP = "neurostorm.tasks"
FAMILIES: dict[str, TaskFamily] = {}
_plugins_loaded = False


def register_task(family: type[TaskFamily] | TaskFamily) -> type[TaskFamily] | TaskFamily:
    """Add a task family (a :class:`TaskFamily` subclass or instance) under its ``kind``; returns it, so it
    can decorate the class. A kind that is taken by another family is refused."""
    instance = family() if isinstance(family, type) else family
    if not isinstance(instance, TaskFamily):
        raise TypeError(f"{family!r} is not a TaskFamily")
    taken = FAMILIES.get(instance.kind)
    if taken is not None and type(taken) is not type(instance):
        raise ValueError(f"task kind {instance.kind!r} is already registered by {type(taken).__qualname__}")
    FAMILIES[instance.kind] = instance
    return family


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if isinstance(loaded, TaskFamily) or (isinstance(loaded, type) and issubclass(loaded, TaskFamily)):
                register_task(loaded)
        except Exception as err:  # a broken plugin must not take the built-in families down with it
            warnings.warn(f"task family plugin {point.name} ({point.value}) cannot be loaded: "
                          f"{type(err).__name__}: {err}", stacklevel=2)


def task_kinds() -> list[str]:
    """Every registered ``task.kind``, built-in and from plugins."""
    _load_plugins()
    return sorted(FAMILIES)


def task_family(kind: str) -> TaskFamily:
    """The family of ``task.kind``; an unknown kind is an :class:`InputError` naming the registered ones."""
    if kind not in task_kinds():
        raise InputError("task.kind", f"unknown task kind {kind!r}; registered: {', '.join(task_kinds())}")
    return FAMILIES[kind]


for _family in (Classification, Regression, TaskState, ImageRetrieval, Reidentification):
    register_task(_family)

__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "TaskFamily", "register_task", "task_family", "task_kinds"]
