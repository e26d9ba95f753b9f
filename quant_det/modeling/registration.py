"""Registering into detectron2's registries so that importing a module twice is harmless."""


def register_once(registry):
    """Return a decorator that registers a class or function in `registry` under its `__name__`.

    detectron2's `registry.register()` asserts when a name is taken, which breaks a second import
    of the same module (e.g. `importlib.reload`, or a module loaded under two paths). This
    decorator returns the object already registered when it comes from the same module and
    qualified name, and raises `KeyError` when the name belongs to someone else, so that two
    different "FCOS" implementations never silently replace each other.

    Example:
        @register_once(META_ARCH_REGISTRY)
        class FCOS(...): ...
    """

    def deco(obj):
        name = obj.__name__
        if name not in registry:
            registry.register(obj)
            return obj
        existing = registry.get(name)
        if (existing.__module__, existing.__qualname__) != (obj.__module__, obj.__qualname__):
            raise KeyError(
                f"{name!r} is already registered by {existing.__module__}.{existing.__qualname__};"
                f" cannot register {obj.__module__}.{obj.__qualname__} under the same name"
            )
        return existing

    return deco
