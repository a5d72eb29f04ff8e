"""The file guard puts a policy in force only when its approved programs resolve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from baomi.policy.errors import PolicyError
from baomi.v1 import events_pb2

from agent.sensors.files.sensor import FileGuard, FileGuardConfig

MODEL = Path(__file__).resolve().parents[4] / "policies" / "model.conf"


def _guard(tmp_path: Path, app: str) -> tuple[FileGuard, Path]:
    root = tmp_path / "secret"
    root.mkdir(exist_ok=True)
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    shutil.copy(MODEL, policies / "model.conf")
    (policies / "policy.csv").write_text(f"p, alice, {root}/**, read, allow\n")
    (policies / "subjects.toml").write_text(
        f'[people.alice]\nuid = 2001\ndepartment = "x"\napps = {{ "绝密" = ["{app}"] }}\n'
    )
    events: list[events_pb2.Event] = []
    guard = FileGuard(FileGuardConfig(roots=(root,), label_key=b"k" * 32), events.append)
    return guard, policies


def test_a_policy_with_resolvable_programs_is_put_in_force(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    viewer = tmp_path / "bin" / "viewer"
    shutil.copy("/usr/bin/cat", viewer)
    guard, policies = _guard(tmp_path, str(viewer))
    guard.apply_policy(policies)
    assert guard.policy_version


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ("/nonexistent/wps", "alice: application /nonexistent/wps: cannot open it"),
        ("{root}/viewer", "lies in the protected tree"),
    ],
)
def test_a_policy_whose_programs_do_not_resolve_is_refused(
    tmp_path: Path, app: str, reason: str
) -> None:
    root = tmp_path / "secret"
    root.mkdir()
    shutil.copy("/usr/bin/cat", root / "viewer")
    guard, policies = _guard(tmp_path, app.format(root=root))
    with pytest.raises(PolicyError) as err:
        guard.apply_policy(policies)
    assert err.value.file == str(policies / "subjects.toml")
    assert reason in err.value.reason
    assert guard.policy_version == ""  # nothing in force: every protected open is denied
