"""Building frozen value objects on the request path without attrs' per-field
``object.__setattr__`` (internal).

The ``__init__`` attrs generates for a frozen slotted class sets each field through
``object.__setattr__(self, name, value)``, a lookup of the name per field, which makes up most
of the cost of building a small value. Two ways around it, both setting the slots through
their descriptors (about two fifths cheaper), with code generated from the class's attrs
fields as attrs generates its own:

- :func:`builder`: a function with the class's ``__init__`` parameters that builds a value,
  for classes whose ``__init__`` does nothing but set fields (no converters, validators,
  factories or ``__attrs_post_init__``): the library builds them from parts it made.
- :func:`slot_init`: the class's own ``__init__`` replaced by one doing what attrs' does
  (defaults, factories, converters, ``__attrs_post_init__``, in attrs' order), for value
  types the caller builds on every request (``Message``, ``AIRequest``, ``Usage``). A
  converter must be pure (the same result for the same argument, no side effect): one that
  returns a field's default unchanged is not called when the default itself is passed.

Anything else (validators, ``on_setattr`` hooks, ``takes_self`` factories, a pre-init hook)
raises ``TypeError`` when the module defining the class is imported, so neither can quietly
skip a check. ``tests/core/test_trusted.py`` holds each to attrs' own ``__init__``: the same
value from the same arguments, the same error from bad ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["ATTRS_INITS", "builder", "slot_init"]

T = TypeVar("T")
C = TypeVar("C", bound=type)

_CONVERTER: Any = getattr(attrs, "Converter", ())  # attrs >= 24.1: may take self

#: The ``__init__`` attrs generated for each class given to :func:`slot_init` (for the tests).
ATTRS_INITS: dict[type, Callable[..., None]] = {}


def _compile(cls: type, *, as_init: bool, checked: bool = False) -> Callable[..., Any]:
    if not (attrs.has(cls) and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__}: not a slotted attrs class")
    if getattr(cls, "__attrs_pre_init__", None) is not None:
        raise TypeError(f"{cls.__name__}: its __init__ runs a pre-init hook")
    post = getattr(cls, "__attrs_post_init__", None) is not None
    if post and not as_init and not checked:
        raise TypeError(f"{cls.__name__}: its __init__ runs a hook")
    params: list[str] = ["self"] if as_init else []
    body: list[str] = [] if as_init else ["    self = _new(_cls)"]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "NOTHING": attrs.NOTHING}
    for i, f in enumerate(attrs.fields(cls)):
        factory = isinstance(f.default, attrs.Factory)  # type: ignore[arg-type]
        if f.validator is not None or f.on_setattr not in (None, attrs.setters.NO_OP) \
                or (factory and f.default.takes_self) \
                or ((factory or f.converter is not None) and not as_init):
            raise TypeError(f"{cls.__name__}.{f.name}: checked or computed when built")
        env[f"_s{i}"] = getattr(cls, f.name).__set__
        value = f.alias
        if f.converter is not None:
            if not callable(f.converter) or isinstance(f.converter, _CONVERTER):
                raise TypeError(f"{cls.__name__}.{f.name}: a converter of another kind")
            env[f"_c{i}"] = f.converter
        if not f.init:
            if f.default is attrs.NOTHING:
                continue  # left unset, as attrs leaves it
            if factory:
                env[f"_f{i}"] = f.default.factory
                body.append(f"    _s{i}(self, _f{i}())")
            else:
                env[f"_d{i}"] = f.default
                body.append(f"    _s{i}(self, _d{i})")
            continue
        if f.default is attrs.NOTHING:
            params.append(f.alias)
        elif factory:
            params.append(f"{f.alias}=NOTHING")
            env[f"_f{i}"] = f.default.factory
            body.append(f"    if {f.alias} is NOTHING:\n        {f.alias} = _f{i}()")
        else:
            env[f"_d{i}"] = f.default
            params.append(f"{f.alias}=_d{i}")
        if f.converter is not None:
            value = f"_c{i}({f.alias})"
            if not factory and f.default is not attrs.NOTHING \
                    and f.converter(f.default) is f.default:
                # The default converts to itself (``stop=()``): passed as it is, the call
                # is skipped (converters are pure: they check and convert, nothing else).
                value = f"{f.alias} if {f.alias} is _d{i} else {value}"
        body.append(f"    _s{i}(self, {value})")
    if as_init:
        if post:
            body.append("    self.__attrs_post_init__()")
        body.append("    return None")
    else:
        body.append("    return self")
    name = "__init__" if as_init else f"build_{cls.__name__}"
    src = f"def {name}({', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(compile(src, f"<{name} of {cls.__qualname__} (squirrel_models.trusted)>", "exec"), env)
    fn: Callable[..., Any] = env[name]
    fn.__qualname__ = f"{cls.__qualname__}.{name}" if as_init else name
    return fn


def builder(cls: type[T], *, checked: bool = False) -> Callable[..., T]:
    """A constructor of ``cls`` equal to its attrs ``__init__`` (same parameters, same
    defaults, the same value built), for a frozen slotted attrs class that checks nothing.
    ``checked``: the class's ``__attrs_post_init__`` is a check of the values (what a plugin
    passes), which the builder skips: for values the library made from parts it checked."""
    return _compile(cls, as_init=False, checked=checked)


def slot_init(cls: C) -> C:
    """Class decorator (under ``attrs.frozen``): replaces the ``__init__`` attrs generated by
    one that does the same with the slots set through their descriptors."""
    original = cls.__dict__["__init__"]
    init = _compile(cls, as_init=True)
    init.__annotations__ = dict(getattr(original, "__annotations__", {}))
    ATTRS_INITS[cls] = original
    cls.__init__ = init  # type: ignore[misc]
    return cls
