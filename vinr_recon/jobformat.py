"""The jobs' format on the queue: msgpack, data only, on every side (never arq's default pickle).

Whoever can write to the Redis could run code in a worker that unpickled its jobs; a msgpack
job is strings, bytes, numbers, lists and maps, and nothing in it is ever called. arq takes the
pair as `job_serializer` / `job_deserializer` (Worker, create_pool, ArqRedis) and uses it for
results too; the receiver's Lua enqueue stores `dumps` bytes as they are.

A job in any other format (a pickle written by an earlier version, or by someone who should
not) is `NotDataJob`: the worker refuses it (worker.settings.Worker). `vinr-recon queue convert`
(vinr_recon.convert) turns the earlier version's pickled jobs into this format with an
unpickler that builds plain data only.
"""

from __future__ import annotations

from typing import Any

import msgpack


class NotDataJob(ValueError):
    """The bytes are not a job (or result) in the data-only format."""


def kind_of(raw: bytes) -> str:
    """What refused bytes look like, for logs and metrics: `pickle` or `unknown`."""
    # Every pickle of protocol 2 or later opens with PROTO (0x80) and its number; msgpack's 0x80
    # is an empty map, which is never a whole job.
    return "pickle" if len(raw) > 1 and raw[0] == 0x80 and 2 <= raw[1] <= 5 else "unknown"


def dumps(data: dict[str, Any]) -> bytes:
    """A job (or result) as msgpack. A job's arguments must be data already (TypeError if not);
    a result's value that is not (an exception, a datetime) is kept as its text."""
    packed: bytes  # msgpack ships no types
    if "s" in data and "r" in data:  # arq's result: success and result beside the job's fields
        packed = msgpack.packb(data, use_bin_type=True, datetime=False, default=_as_text)
    else:
        packed = msgpack.packb(data, use_bin_type=True, datetime=False)
    return packed


def loads(raw: bytes) -> dict[str, Any]:
    """A job (or result) from msgpack; `NotDataJob` for anything else, never executing any of it."""
    try:
        data = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext)
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ValueError...
        raise NotDataJob(f"not a msgpack job ({kind_of(raw)}): {type(exc).__name__}") from None
    if not (isinstance(data, dict) and isinstance(data.get("f"), str) and isinstance(data.get("a"), list)
            and isinstance(data.get("k"), dict)):
        raise NotDataJob(f"not a job: a msgpack {type(data).__name__} without function and arguments")
    return data


def is_data_job(raw: bytes) -> bool:
    try:
        loads(raw)
    except NotDataJob:
        return False
    return True


def _as_text(value: object) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if hasattr(value, "isoformat"):  # a datetime, a date, a time
        return str(value.isoformat())
    return repr(value)


def _no_ext(code: int, data: bytes) -> None:
    raise ValueError(f"msgpack extension type {code} is not data")


# Keyword arguments for arq's Worker, create_pool and ArqRedis.
JOB_FORMAT: dict[str, Any] = {"job_serializer": dumps, "job_deserializer": loads}
