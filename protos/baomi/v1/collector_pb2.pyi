from baomi.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class ChainHead(_message.Message):
    __slots__ = ("seq", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: bytes
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("host_id", "certificate_pem", "ca_pem", "head", "signing_key_pem")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    certificate_pem: bytes
    ca_pem: bytes
    head: ChainHead
    signing_key_pem: bytes
    def __init__(self, host_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., head: _Optional[_Union[ChainHead, _Mapping]] = ..., signing_key_pem: _Optional[bytes] = ...) -> None: ...

class WatchPolicyRequest(_message.Message):
    __slots__ = ("current_version",)
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    current_version: str
    def __init__(self, current_version: _Optional[str] = ...) -> None: ...

class PolicyBundle(_message.Message):
    __slots__ = ("version", "files", "author", "signature")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: str
    files: _containers.ScalarMap[str, bytes]
    author: str
    signature: bytes
    def __init__(self, version: _Optional[str] = ..., files: _Optional[_Mapping[str, bytes]] = ..., author: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WatchOrdersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LabelOrder(_message.Message):
    __slots__ = ("order_id", "host_id", "home", "content_hash", "level", "until", "scope", "register_id", "action", "issued_us", "signature")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_US_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    host_id: str
    home: str
    content_hash: str
    level: _events_pb2.Level
    until: str
    scope: _containers.RepeatedScalarFieldContainer[str]
    register_id: str
    action: str
    issued_us: int
    signature: bytes
    def __init__(self, order_id: _Optional[str] = ..., host_id: _Optional[str] = ..., home: _Optional[str] = ..., content_hash: _Optional[str] = ..., level: _Optional[_Union[_events_pb2.Level, str]] = ..., until: _Optional[str] = ..., scope: _Optional[_Iterable[str]] = ..., register_id: _Optional[str] = ..., action: _Optional[str] = ..., issued_us: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...
