"""JSON on the service's socket for the thin client, without importing :mod:`json`.

``import json`` loads ``re`` and ``enum`` (and ``socket`` loads ``enum`` too): a few ms of every
thin client's start, which is the whole budget of a served call. The C accelerators that
:mod:`json` itself uses (``_json``) read and write the same JSON; where they are missing (another
Python), :mod:`json` is used. Only plain JSON types go over the wire.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_dump: Callable[[Any], str] | None = None
_load: Callable[[str], Any] | None = None


def _not_json(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


try:
    import _json

    class _Context:  # what json.JSONDecoder hands the C scanner
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
        memo: dict[str, str] = {}

    _encode = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None, ": ", ", ",
                                 False, False, True)
    _scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # what JSONDecoder hands it

    def _c_dump(obj: Any) -> str:
        return "".join(_encode(obj, 0))

    def _c_load(text: str) -> Any:
        try:
            obj, end = _scan(text, 0)
        except StopIteration as exc:
            raise ValueError(f"not JSON at {exc.value}") from None
        if text[end:].strip(" \t\r\n"):
            raise ValueError(f"extra data at {end}")
        return obj

    _dump, _load = _c_dump, _c_load
except (ImportError, AttributeError, TypeError):  # pragma: no cover - a Python without _json
    pass


def dumps(obj: Any) -> str:
    """``obj`` as one line of JSON (as ``json.dumps`` writes it)."""
    if _dump is not None:
        return _dump(obj)
    import json
    return json.dumps(obj)


def loads(data: bytes | str) -> Any:
    """One JSON document (ValueError if it is not one)."""
    text = data.decode() if isinstance(data, bytes) else data
    if _load is not None:
        return _load(text.lstrip(" \t\r\n"))
    import json
    return json.loads(text)


__all__ = ["dumps", "loads"]
