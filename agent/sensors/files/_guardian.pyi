# Types of the C extension agent/sensors/files/_guardian.c.

def serve(
    fan_fd: int,
    stop_fd: int,
    journal_fd: int,
    own_pid: int,
    idle_ms: int = ...,
    records: int = ...,
) -> tuple[int, int, int]:
    """Answer the group (labelled or uninspectable: deny) until stop_fd is readable."""

def deny_pending(fan_fd: int, fd_limit: int, /) -> list[int]:
    """Deny the events a dead reader held as fds 0..fd_limit-1; the numbers that matched."""

def flush_marks(fan_fd: int, /) -> None:
    """Remove every mark of the group (FAN_MARK_FLUSH): it then sees no event."""
