"""The exceptions billiard-host workers store for failures that have no
Python class of their own (docs/celery.md, "Error kinds -> Python
exceptions").

Celery rebuilds a stored exception from its ``exc_module`` and
``exc_type`` only when that module is already imported
(``sys.modules``); otherwise it synthesizes a class of that name. Import
this module in the client (``import billiard_host.exceptions``) and
``.get()`` raises these very classes, so ``except`` matches them by type.
Without the import, match by name: ``type(e).__name__ == "PluginError"``
(no Celery class has these names).
"""


class BilliardHostError(Exception):
    """Base of every failure only billiard-host names."""


class PluginError(BilliardHostError):
    """The task returned an error (kind ``task_error``): the task's text."""


class TaskPanic(BilliardHostError):
    """The task panicked (kind ``panic``): the panic message, its location
    and the backtrace."""


class PluginLoadError(BilliardHostError):
    """The worker could not load the task's plugin (kind ``plugin_load``)."""


__all__ = ["BilliardHostError", "PluginError", "TaskPanic", "PluginLoadError"]
