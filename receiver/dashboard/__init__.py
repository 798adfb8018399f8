"""The dashboard: server-rendered pages under `/dashboard` for finance and account managers.

`dashboard_mount(settings)` is the one line receiver.app adds to its routes. Pages read through
the engine the receiver's lifespan opened and replay dead letters through its Redis.
"""

from receiver.dashboard.pages import dashboard_mount

__all__ = ["dashboard_mount"]
