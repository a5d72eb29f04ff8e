# Chinese text uses full-width punctuation, as Chinese typesetting requires:
# ruff: noqa: RUF001
"""What ``baomi-agent`` and ``baomi-collector`` print to a person, in Chinese or English,
and columns measured in terminal cells.

The language comes from the environment in POSIX order: the first of ``LC_ALL``,
``LC_MESSAGES`` and ``LANG`` that is set and not empty decides. A value starting with
``zh`` (``zh_CN.UTF-8``, ``zh_TW``, ``zh``) gives Chinese; anything else gives English,
and so does no setting at all. The product is Chinese first, but ``LANG=C`` (or no
``LANG``) is what cron, systemd units and CI give, and there the output feeds logs and
scripts: English keeps it stable. JSON output (``--json``) never depends on the language.

The Chinese words are the web console's (``collector/console/i18n.py``) and the reports'
where those have one: 准予召开/不准召开, 放行/阻断/拒绝, 允许/拒绝, 信息/低/中/高/严重.

Chinese characters take two terminal cells and ``f"{s:<46}"`` pads by code points, so
tables pad and cut with :func:`pad` and :func:`fit`, which count cells. Shared by the
agent and the collector, like :mod:`baomi.display`.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping

LANGS = ("zh", "en")
_LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")  # POSIX precedence for messages

_ZH: Mapping[str, str] = {
    # baomi-agent meeting check / sweep
    "meeting.col.id": "编号",
    "meeting.col.result": "结果",
    "meeting.col.mandatory": "必",
    "meeting.col.item": "检查项",
    "meeting.col.evidence": "证据",
    "meeting.result.pass": "通过",
    "meeting.result.fail": "未通过",
    "meeting.result.unknown": "无法判定",
    "meeting.cleared": "准予召开",
    "meeting.not_cleared": "不准召开",
    "list_separator": "、",
    "meeting.blocking": "：{items}",
    "meeting.optional_missing": "（选查项 {items} 未测量）",
    "meeting.verdict_line": "{verdict}（* 为必查项）；{signed}",
    "meeting.not_signed": "未签名，未发送（未加 --record）",
    "meeting.signed": "已由 {host} 签名，暂存为事件 {seq}",
    "meeting.header_room": "会议室 {room}",
    "meeting.header_meeting": "，会议 {meeting}",
    "meeting.header_sweep": "会议 {meeting}（会议室 {room}）会后清场，检查人 {inspector}",
    "meeting.item.C0": "在会议规定时段内检查",
    "meeting.item.C1": "无未经批准的音视频采集设备",
    "meeting.item.C2": "扩声系统仅有线连接",
    "meeting.item.C3": "无录音录像或直播软件",
    "meeting.item.C4": "会议室计算机无无线功能",
    "meeting.item.C5": "干扰器已开启并覆盖规定频段",
    "meeting.item.C6": "干扰器经过批准",
    "meeting.item.C7": "屏蔽柜通电、柜门关闭",
    "meeting.item.C8": "屏蔽柜确实屏蔽（BLE信标）",
    "meeting.item.C9": "屏蔽柜外无手机（BLE）",
    "meeting.item.C10": "无无线话筒或不明发射源",
    "meeting.item.C11": "录音录像均经批准",
    "meeting.item.C12": "参会人员已登记、具备资格、手机已存放",
    "meeting.item.C13": "会后清场",
    # baomi-agent explain
    "explain.allow": "允许",
    "explain.deny": "拒绝",
    "explain.not_enforced": "不执行",
    "explain.label_end": "：",
    "explain.who": "人员",
    "explain.with": "程序",
    "explain.home": "归属",
    "explain.label": "密级标识",
    "explain.enforced": "执行方式",
    "explain.note": "说明",
    "explain.reason": "原因",
    "explain.rule": "规则",
    "explain.casbin": "Casbin",
    "explain.policy": "策略",
    # baomi-agent devices list
    "devices.col.port": "端口",
    "devices.col.id": "ID",
    "devices.col.auth": "授权",
    "devices.col.decision": "判定",
    "devices.col.class": "类别",
    "devices.col.name": "名称",
    "devices.col.serial": "序列号",
    "devices.col.rule": "规则",
    "devices.decision.allow": "放行",
    "devices.decision.block": "阻断",
    "devices.decision.reject": "拒绝",
    "devices.none": "（无USB设备）",
    # baomi-collector events
    "events.col.time": "时间",
    "events.col.host": "终端",
    "events.col.seq": "序号",
    "events.col.severity": "严重程度",
    "events.col.kind": "类型",
    "events.col.detail": "详情",
    "events.severity.info": "信息",
    "events.severity.low": "低",
    "events.severity.medium": "中",
    "events.severity.high": "高",
    "events.severity.critical": "严重",
    "events.severity.unspecified": "未指定",
    "events.kind.file_access": "文件访问",
    "events.kind.file_change": "文件变更",
    "events.kind.device": "USB设备",
    "events.kind.network": "网络外联",
    "events.kind.process": "进程",
    "events.kind.meeting_check": "会议检查",
    "events.kind.agent_status": "代理状态",
    "events.kind.policy_applied": "策略下发",
    "events.kind.tamper": "篡改告警",
    "events.kind.console_action": "控制台操作",
    # baomi-agent report (an offline host's own record)
    "report.title": "涉密计算机检查记录：{host}",
    "report.made": "生成时间：{when}",
    "report.record": "记录：seq 1..{head}；本机保存 {kept} 条（{first} 至 {last}）",
    "report.export": "已导出至 seq {exported}，已确认导入至 seq {acked}，{waiting} 条待确认",
    "report.chain_ok": "哈希链：完整",
    "report.chain_broken": "哈希链断裂：seq {seqs}",
    "report.by_kind": "按类型：{kinds}",
    "report.section": "{title}：",
    "report.denied": "拒绝的访问（{count} 次）",
    "report.usb": "USB设备",
    "report.links": "违规外联",
    "report.tamper": "篡改告警",
    "report.exports": "导出记录",
    "report.none": "无",
}

# English is what the programs printed before they spoke Chinese: scripts and tests
# read it, so these words do not change. Keys with no English entry (the item titles,
# a decision or kind shown as it is) fall back to the caller's ``default``.
_EN: Mapping[str, str] = {
    "meeting.col.id": "ID",
    "meeting.col.result": "RESULT",
    "meeting.col.mandatory": "M",
    "meeting.col.item": "ITEM",
    "meeting.col.evidence": "EVIDENCE",
    "meeting.cleared": "CLEARED",
    "meeting.not_cleared": "NOT CLEARED",
    "list_separator": ", ",
    "meeting.blocking": ": {items}",
    "meeting.optional_missing": " (optional {items} not measured)",
    "meeting.verdict_line": "{verdict} (* mandatory); {signed}",
    "meeting.not_signed": "not signed or sent (no --record)",
    "meeting.signed": "signed by {host}, spooled as event {seq}",
    "meeting.header_room": "room {room}",
    "meeting.header_meeting": ", meeting {meeting}",
    "meeting.header_sweep": "sweep of meeting {meeting} in {room} by {inspector}",
    "explain.allow": "ALLOW",
    "explain.deny": "DENY",
    "explain.not_enforced": "NOT ENFORCED",
    "explain.label_end": ":",
    "explain.who": "who",
    "explain.with": "with",
    "explain.home": "home",
    "explain.label": "label",
    "explain.enforced": "enforced",
    "explain.note": "note",
    "explain.reason": "reason",
    "explain.rule": "rule",
    "explain.casbin": "casbin",
    "explain.policy": "policy",
    "devices.col.port": "PORT",
    "devices.col.id": "ID",
    "devices.col.auth": "AUTH",
    "devices.col.decision": "DECISION",
    "devices.col.class": "CLASS",
    "devices.col.name": "NAME",
    "devices.col.serial": "SERIAL",
    "devices.col.rule": "RULE",
    "devices.none": "(no USB devices)",
    "events.col.time": "TIME",
    "events.col.host": "HOST",
    "events.col.seq": "SEQ",
    "events.col.severity": "SEVERITY",
    "events.col.kind": "KIND",
    "events.col.detail": "DETAIL",
    "report.title": "Host inspection record: {host}",
    "report.made": "made: {when}",
    "report.record": "record: seq 1..{head}; {kept} events kept here ({first} to {last})",
    "report.export": "exported through seq {exported}, import confirmed through seq {acked}, "
    "{waiting} waiting for confirmation",
    "report.chain_ok": "hash chain: unbroken",
    "report.chain_broken": "hash chain BROKEN at seq {seqs}",
    "report.by_kind": "events by kind: {kinds}",
    "report.section": "{title}:",
    "report.denied": "denied accesses ({count})",
    "report.usb": "USB devices",
    "report.links": "illicit links",
    "report.tamper": "tamper events",
    "report.exports": "exports",
    "report.none": "none",
}

MESSAGES: Mapping[str, Mapping[str, str]] = {"zh": _ZH, "en": _EN}


def lang(environ: Mapping[str, str] | None = None) -> str:
    """``"zh"`` or ``"en"`` from ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` (the first that is
    set and not empty); English when none is, or for ``C``, ``POSIX`` and other languages."""
    env = os.environ if environ is None else environ
    for name in _LOCALE_VARIABLES:
        value = env.get(name, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def t(
    key: str, /, language: str | None = None, default: str | None = None, **values: object
) -> str:
    """The text of ``key`` in ``language`` (default: :func:`lang`), ``{name}`` fields
    filled from ``values``; ``default`` (else the key itself) when that language has none."""
    text = MESSAGES.get(language or lang(), _EN).get(key)
    if text is None:
        return key if default is None else default
    return text.format(**values) if values else text


def char_cells(char: str) -> int:
    """Terminal cells of one character: 2 for East Asian wide and full-width, 0 for a
    combining mark, otherwise 1 (ambiguous width counts 1, as in most terminals)."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """Terminal cells ``text`` takes on one line."""
    if text.isascii():
        return len(text)
    return sum(char_cells(c) for c in text)


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` cells (not cut when it is wider)."""
    return text + " " * max(0, width - cells(text))


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` cells, ending with ``…`` when it was cut."""
    if cells(text) <= width:
        return text
    out, used = [], 0
    for char in text:
        size = char_cells(char)
        if used + size > width - 1:  # one cell kept for the ellipsis
            break
        out.append(char)
        used += size
    return "".join(out) + "…"


def table(rows: list[tuple[str, ...]], gap: str = "  ") -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell (in terminal
    cells), trailing spaces removed."""
    widths = [max(cells(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [gap.join(pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
