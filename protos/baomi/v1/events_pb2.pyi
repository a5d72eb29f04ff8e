import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEVEL_UNCLASSIFIED: _ClassVar[Level]
    LEVEL_CONFIDENTIAL: _ClassVar[Level]
    LEVEL_SECRET: _ClassVar[Level]
    LEVEL_TOP_SECRET: _ClassVar[Level]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
LEVEL_UNCLASSIFIED: Level
LEVEL_CONFIDENTIAL: Level
LEVEL_SECRET: Level
LEVEL_TOP_SECRET: Level
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision

class FileAccess(_message.Message):
    __slots__ = ("path", "action", "uid", "user", "pid", "executable", "level", "label_id", "decision", "reason", "rule", "cmdline", "label_until", "label_scope", "count", "first", "last", "home")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    LABEL_UNTIL_FIELD_NUMBER: _ClassVar[int]
    LABEL_SCOPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    path: str
    action: str
    uid: int
    user: str
    pid: int
    executable: str
    level: Level
    label_id: str
    decision: Decision
    reason: str
    rule: str
    cmdline: str
    label_until: str
    label_scope: _containers.RepeatedScalarFieldContainer[str]
    count: int
    first: _timestamp_pb2.Timestamp
    last: _timestamp_pb2.Timestamp
    home: str
    def __init__(self, path: _Optional[str] = ..., action: _Optional[str] = ..., uid: _Optional[int] = ..., user: _Optional[str] = ..., pid: _Optional[int] = ..., executable: _Optional[str] = ..., level: _Optional[_Union[Level, str]] = ..., label_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ..., rule: _Optional[str] = ..., cmdline: _Optional[str] = ..., label_until: _Optional[str] = ..., label_scope: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ..., first: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., home: _Optional[str] = ...) -> None: ...

class FileChange(_message.Message):
    __slots__ = ("path", "change", "old_path", "uid", "pid", "level", "label_id", "home", "detail")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    OLD_PATH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    path: str
    change: str
    old_path: str
    uid: int
    pid: int
    level: Level
    label_id: str
    home: str
    detail: str
    def __init__(self, path: _Optional[str] = ..., change: _Optional[str] = ..., old_path: _Optional[str] = ..., uid: _Optional[int] = ..., pid: _Optional[int] = ..., level: _Optional[_Union[Level, str]] = ..., label_id: _Optional[str] = ..., home: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("action", "device_class", "vendor_id", "product_id", "serial", "name", "descriptor_hash", "port", "interfaces", "decision", "rule", "reason")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    VENDOR_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_HASH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    action: str
    device_class: str
    vendor_id: str
    product_id: str
    serial: str
    name: str
    descriptor_hash: str
    port: str
    interfaces: str
    decision: Decision
    rule: str
    reason: str
    def __init__(self, action: _Optional[str] = ..., device_class: _Optional[str] = ..., vendor_id: _Optional[str] = ..., product_id: _Optional[str] = ..., serial: _Optional[str] = ..., name: _Optional[str] = ..., descriptor_hash: _Optional[str] = ..., port: _Optional[str] = ..., interfaces: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("action", "interface", "link_kind", "address", "gateway", "violation", "reason", "enforced")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    LINK_KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    VIOLATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    action: str
    interface: str
    link_kind: str
    address: str
    gateway: str
    violation: bool
    reason: str
    enforced: bool
    def __init__(self, action: _Optional[str] = ..., interface: _Optional[str] = ..., link_kind: _Optional[str] = ..., address: _Optional[str] = ..., gateway: _Optional[str] = ..., violation: _Optional[bool] = ..., reason: _Optional[str] = ..., enforced: _Optional[bool] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("pid", "name", "executable", "cmdline", "uid", "reason", "started", "devices")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    executable: str
    cmdline: str
    uid: int
    reason: str
    started: _timestamp_pb2.Timestamp
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., executable: _Optional[str] = ..., cmdline: _Optional[str] = ..., uid: _Optional[int] = ..., reason: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckItem(_message.Message):
    __slots__ = ("id", "title", "result", "evidence", "mandatory")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    MANDATORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    result: str
    evidence: str
    mandatory: bool
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., result: _Optional[str] = ..., evidence: _Optional[str] = ..., mandatory: _Optional[bool] = ...) -> None: ...

class MeetingCheck(_message.Message):
    __slots__ = ("room", "meeting", "phase", "cleared", "items", "inspector", "signature")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    MEETING_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INSPECTOR_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    room: str
    meeting: str
    phase: str
    cleared: bool
    items: _containers.RepeatedCompositeFieldContainer[CheckItem]
    inspector: str
    signature: bytes
    def __init__(self, room: _Optional[str] = ..., meeting: _Optional[str] = ..., phase: _Optional[str] = ..., cleared: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[CheckItem, _Mapping]]] = ..., inspector: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SensorHealth(_message.Message):
    __slots__ = ("name", "state", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("version", "policy_version", "sensors", "spool_events", "spool_bytes", "state", "heartbeat_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    policy_version: str
    sensors: _containers.RepeatedCompositeFieldContainer[SensorHealth]
    spool_events: int
    spool_bytes: int
    state: str
    heartbeat_seconds: int
    def __init__(self, version: _Optional[str] = ..., policy_version: _Optional[str] = ..., sensors: _Optional[_Iterable[_Union[SensorHealth, _Mapping]]] = ..., spool_events: _Optional[int] = ..., spool_bytes: _Optional[int] = ..., state: _Optional[str] = ..., heartbeat_seconds: _Optional[int] = ...) -> None: ...

class PolicyApplied(_message.Message):
    __slots__ = ("version", "ok", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    ok: bool
    error: str
    def __init__(self, version: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Tamper(_message.Message):
    __slots__ = ("kind", "detail", "gap_start", "gap_end", "subject_host", "subject_seq", "subject_seqs")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    GAP_START_FIELD_NUMBER: _ClassVar[int]
    GAP_END_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_HOST_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_SEQS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    detail: str
    gap_start: _timestamp_pb2.Timestamp
    gap_end: _timestamp_pb2.Timestamp
    subject_host: str
    subject_seq: int
    subject_seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[str] = ..., detail: _Optional[str] = ..., gap_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gap_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subject_host: _Optional[str] = ..., subject_seq: _Optional[int] = ..., subject_seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class ConsoleAction(_message.Message):
    __slots__ = ("actor", "role", "action", "target", "detail", "ok", "client", "user_agent")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    actor: str
    role: str
    action: str
    target: str
    detail: str
    ok: bool
    client: str
    user_agent: str
    def __init__(self, actor: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., detail: _Optional[str] = ..., ok: _Optional[bool] = ..., client: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class LabelRequest(_message.Message):
    __slots__ = ("request_id", "action", "register_id", "path", "content_hash", "level", "until", "scope", "basis", "title", "requester", "responsible", "host")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    RESPONSIBLE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: str
    register_id: str
    path: str
    content_hash: str
    level: Level
    until: str
    scope: _containers.RepeatedScalarFieldContainer[str]
    basis: str
    title: str
    requester: str
    responsible: str
    host: str
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[str] = ..., register_id: _Optional[str] = ..., path: _Optional[str] = ..., content_hash: _Optional[str] = ..., level: _Optional[_Union[Level, str]] = ..., until: _Optional[str] = ..., scope: _Optional[_Iterable[str]] = ..., basis: _Optional[str] = ..., title: _Optional[str] = ..., requester: _Optional[str] = ..., responsible: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class RegisterStep(_message.Message):
    __slots__ = ("register_id", "step", "request_id", "actor", "reason", "request", "order_id", "status", "content_hash", "source")
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    register_id: str
    step: str
    request_id: str
    actor: str
    reason: str
    request: LabelRequest
    order_id: str
    status: str
    content_hash: str
    source: str
    def __init__(self, register_id: _Optional[str] = ..., step: _Optional[str] = ..., request_id: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., request: _Optional[_Union[LabelRequest, _Mapping]] = ..., order_id: _Optional[str] = ..., status: _Optional[str] = ..., content_hash: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class LabelOrderResult(_message.Message):
    __slots__ = ("order_id", "register_id", "ok", "error", "home", "content_hash", "level")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    register_id: str
    ok: bool
    error: str
    home: str
    content_hash: str
    level: Level
    def __init__(self, order_id: _Optional[str] = ..., register_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., home: _Optional[str] = ..., content_hash: _Optional[str] = ..., level: _Optional[_Union[Level, str]] = ...) -> None: ...

class LabelledFile(_message.Message):
    __slots__ = ("home", "register_id", "level", "until", "scope", "content_hash", "problem")
    HOME_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    home: str
    register_id: str
    level: Level
    until: str
    scope: _containers.RepeatedScalarFieldContainer[str]
    content_hash: str
    problem: str
    def __init__(self, home: _Optional[str] = ..., register_id: _Optional[str] = ..., level: _Optional[_Union[Level, str]] = ..., until: _Optional[str] = ..., scope: _Optional[_Iterable[str]] = ..., content_hash: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class LabelInventory(_message.Message):
    __slots__ = ("files", "truncated")
    FILES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[LabelledFile]
    truncated: bool
    def __init__(self, files: _Optional[_Iterable[_Union[LabelledFile, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("host_id", "seq", "time", "prev_hash", "severity", "file_access", "file_change", "device", "network", "process", "meeting_check", "agent_status", "policy_applied", "tamper", "console_action", "label_request", "register_step", "label_order_result", "label_inventory")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    FILE_ACCESS_FIELD_NUMBER: _ClassVar[int]
    FILE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    MEETING_CHECK_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_APPLIED_FIELD_NUMBER: _ClassVar[int]
    TAMPER_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_ACTION_FIELD_NUMBER: _ClassVar[int]
    LABEL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REGISTER_STEP_FIELD_NUMBER: _ClassVar[int]
    LABEL_ORDER_RESULT_FIELD_NUMBER: _ClassVar[int]
    LABEL_INVENTORY_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    prev_hash: bytes
    severity: Severity
    file_access: FileAccess
    file_change: FileChange
    device: Device
    network: Network
    process: Process
    meeting_check: MeetingCheck
    agent_status: AgentStatus
    policy_applied: PolicyApplied
    tamper: Tamper
    console_action: ConsoleAction
    label_request: LabelRequest
    register_step: RegisterStep
    label_order_result: LabelOrderResult
    label_inventory: LabelInventory
    def __init__(self, host_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prev_hash: _Optional[bytes] = ..., severity: _Optional[_Union[Severity, str]] = ..., file_access: _Optional[_Union[FileAccess, _Mapping]] = ..., file_change: _Optional[_Union[FileChange, _Mapping]] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., process: _Optional[_Union[Process, _Mapping]] = ..., meeting_check: _Optional[_Union[MeetingCheck, _Mapping]] = ..., agent_status: _Optional[_Union[AgentStatus, _Mapping]] = ..., policy_applied: _Optional[_Union[PolicyApplied, _Mapping]] = ..., tamper: _Optional[_Union[Tamper, _Mapping]] = ..., console_action: _Optional[_Union[ConsoleAction, _Mapping]] = ..., label_request: _Optional[_Union[LabelRequest, _Mapping]] = ..., register_step: _Optional[_Union[RegisterStep, _Mapping]] = ..., label_order_result: _Optional[_Union[LabelOrderResult, _Mapping]] = ..., label_inventory: _Optional[_Union[LabelInventory, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("code", "reason", "first_seq", "last_seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    first_seq: int
    last_seq: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("host_id", "up_to_seq", "head_hash", "rejection")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    up_to_seq: int
    head_hash: bytes
    rejection: Rejection
    def __init__(self, host_id: _Optional[str] = ..., up_to_seq: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., rejection: _Optional[_Union[Rejection, _Mapping]] = ...) -> None: ...
