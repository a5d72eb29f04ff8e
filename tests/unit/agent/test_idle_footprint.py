"""What a connected agent guarding files loads at start, for its idle resident memory
(issue 11: <= 50 MB): neither Casbin nor cryptography, which it needs only for a
policy that is not plainly the shipped one or for a signature to verify. And the
shortcuts that spare Casbin decide exactly as Casbin does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from baomi.policy import policyset
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import MODEL_TEXT, PolicySet
from casbin.persist.adapter import _extract_tokens

from tests.procs import REPO, fresh_python

SHIPPED = REPO / "policies"


def test_the_run_path_and_the_shipped_policy_load_neither_casbin_nor_cryptography() -> None:
    """Nor the meeting rooms' and meetings' parser, which only the meeting commands (and
    an agent running a room's checks) use."""
    loaded = fresh_python(
        "import sys\n"
        "import agent.cli, agent.core, agent.sensors.files.sensor\n"
        "from baomi.policy.policyset import PolicySet\n"
        f"PolicySet.load({str(SHIPPED)!r})\n"
        "unwanted = {'casbin', 'cryptography', 'baomi.meeting.rooms', 'baomi.meeting.sdr'}\n"
        "print(sorted({n for n in sys.modules if n in unwanted or n.split('.')[0] in unwanted}))\n"
    )
    assert loaded.strip() == "[]", loaded


def test_a_policy_needing_casbin_still_gets_it(tmp_path: Path) -> None:
    """A line with brackets is tokenised by Casbin itself, loaded on demand."""
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED, policies)
    with (policies / "policy.csv").open("a") as f:
        f.write("p, role:staff, /srv/a[bc]/**, read, allow\n")
    loaded = fresh_python(
        "import sys\n"
        "from baomi.policy.policyset import PolicySet\n"
        f"rules = PolicySet.load({str(policies)!r}).rules\n"
        "print(rules[-1].obj, 'casbin' in sys.modules)\n"
    )
    assert loaded.split() == ["/srv/a[bc]/**", "True"], loaded


@pytest.mark.parametrize(
    "line",
    [
        "p, role:staff, /srv/secret/**, read, allow",
        "p,alice,/a b/c,write,deny",
        "  p ,  role:x , /s/** ,read, allow  ",
        "p, , /s, read, allow",
        "p, role:x, /s,",
        "g, role:senior, role:junior",
        "p, 张三, /srv/机密/**, read, allow",
        "p, role:x, /srv/a[bc]/**, read, allow",
        "p, role:x, /srv/(a, b)/**, read, allow",
        "p, role:x, /srv/[a,b]/x, read, allow",
    ],
)
def test_policy_lines_split_as_casbins_file_adapter_splits_them(line: str) -> None:
    assert policyset._tokens(line) == _extract_tokens(line)


def test_an_unbalanced_bracket_fails_as_in_casbin() -> None:
    with pytest.raises(IndexError):
        policyset._tokens("p, role:x, /s]/**, read, allow")


def _policy_dir(tmp_path: Path, model: str) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(SHIPPED, d)
    (d / "model.conf").write_text(model, encoding="utf-8")
    return d


@pytest.mark.parametrize(
    "model",
    [
        MODEL_TEXT,
        (SHIPPED / "model.conf").read_text(encoding="utf-8"),
        "; a comment\n\n" + MODEL_TEXT.replace("\n[", "\n\n   \n  # the next section\n["),
        MODEL_TEXT.replace("\n", "  \r\n"),
    ],
    ids=["engine", "shipped", "blank-and-comment-lines", "crlf"],
)
def test_the_engines_model_with_comments_and_blank_lines_loads(tmp_path: Path, model: str) -> None:
    assert policyset._content_lines(model) == policyset._MODEL_LINES
    PolicySet.load(_policy_dir(tmp_path, model))


def test_a_comment_inside_a_continued_matcher_goes_to_casbin_and_is_refused(
    tmp_path: Path,
) -> None:
    """Casbin ends a statement at a comment line: the matcher would lose its tail."""
    cut = MODEL_TEXT.replace('&& (p.eft == "deny" \\\n', '&& (p.eft == "deny" \\\n# cut\n')
    assert cut != MODEL_TEXT
    assert policyset._content_lines(cut) is None
    with pytest.raises(PolicyError):
        PolicySet.load(_policy_dir(tmp_path, cut))


def test_a_line_break_casbin_does_not_read_as_one_is_not_taken_for_the_model(
    tmp_path: Path,
) -> None:
    """splitlines() would break at U+2028; Casbin reads up to '\\n' only."""
    odd = MODEL_TEXT.replace("g = _, _", "g = _, _\u2028# x")
    assert policyset._content_lines(odd) != policyset._MODEL_LINES
    with pytest.raises(PolicyError):
        PolicySet.load(_policy_dir(tmp_path, odd))


def test_the_guardian_process_loads_only_what_it_runs() -> None:
    """The guardian stays up for as long as the host is guarded, agent or not: it loads
    its C loop and the standard library's plainest parts -- not the agent's sensors,
    OpenSSL (hashlib, secrets) or ctypes (~7 MB resident between them)."""
    loaded = fresh_python(
        "import sys\n"
        "import agent.sensors.files.guardian_daemon\n"
        "unwanted = {'_hashlib', '_ssl', 'ctypes', 'dataclasses', 'grpc', 'google'}\n"
        "agent = {n for n in sys.modules if n.startswith(('agent.', 'baomi'))}\n"
        "print(sorted({n for n in sys.modules if n.split('.')[0] in unwanted} | agent))\n"
    )
    assert loaded.strip() == str(
        sorted(
            [
                "agent.sensors",
                "agent.sensors.files",
                "agent.sensors.files._guardian",
                "agent.sensors.files.guardian_daemon",
            ]
        )
    ), loaded
