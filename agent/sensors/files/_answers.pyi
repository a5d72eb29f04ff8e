# Types of the C extension agent/sensors/files/_answers.c.

class Answers:
    """The read loop of a fanotify permission group, answering repeats in C."""

    def __init__(
        self,
        fan_fd: int,
        own_pid: int,
        limit: int = ...,
        journal_fd: int = ...,
        track_execs: bool = ...,
    ) -> None: ...
    def next(self) -> tuple[int, int, int, int, str, int, int, int, int]: ...
    def next_queued(self) -> tuple[int, int, int, int, str, int, int, int, int] | None: ...
    def remember(
        self,
        pid: int,
        uid: int,
        exe: str,
        dev: int,
        ino: int,
        ctime_ns: int,
        kind: int,
        allow: bool,
        token: object,
        plain: bool = False,
        cls: int = 0,
    ) -> bool: ...
    def take(
        self, forget: bool = False
    ) -> list[tuple[object, int, int, int, int, tuple[int, int, int, bytes] | None]]: ...
    def set_classes(self, entries: bytes, replace: bool = True) -> None: ...
    def close(self) -> None: ...
    def journal_gen(self) -> int: ...
    def tracks_execs(self) -> bool: ...
    def __len__(self) -> int: ...

def respond(fan_fd: int, fd: int, response: int, close: bool = True) -> None: ...
