"""Scoped confirmation tokens: the whole matrix."""
import multiprocessing
import os
import stat

import pytest

from fleet.errors import BadInput, Refused
from fleet.safety.tokens import Scope, TokenRefused, TokenStore


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


SCOPE = Scope.of("blow-away", ["lab02", "lab01"], {"repo": "affordabot"})


def store(tmp_path, clock=None):
    return TokenStore(tmp_path / "cfg", ttl=600, clock=clock or Clock())


def reason(fn):
    with pytest.raises(TokenRefused) as ei:
        fn()
    return ei.value.reason, str(ei.value)


def test_valid_token_works_once_and_is_short(tmp_path):
    s = store(tmp_path)
    tok = s.issue(SCOPE)
    assert len(tok) <= 30 and tok.count("-") == 5
    s.verify(tok, Scope.of("blow-away", ["lab01", "lab02"], {"repo": "affordabot"}))  # host order irrelevant
    r, msg = reason(lambda: s.verify(tok, SCOPE))
    assert r == "reused" and "already used" in msg


def test_secret_is_created_owner_only(tmp_path):
    s = store(tmp_path)
    s.issue(SCOPE)
    assert stat.S_IMODE(os.stat(s.secret_path).st_mode) == 0o600


@pytest.mark.parametrize("other,needle", [
    (Scope.of("blow-away", ["lab01"], {"repo": "affordabot"}), "on [lab01,lab02]"),
    (Scope.of("teardown", ["lab01", "lab02"], {"repo": "affordabot"}), "issued for 'blow-away'"),
    (Scope.of("blow-away", ["lab01", "lab02"], {"repo": "prime-radiant"}), "repo='affordabot'"),
])
def test_wrong_scope_names_the_scope_it_was_for(tmp_path, other, needle):
    s = store(tmp_path)
    tok = s.issue(SCOPE)
    r, msg = reason(lambda: s.verify(tok, other))
    assert r == "wrong_scope" and needle in msg and "not for" in msg
    s.verify(tok, SCOPE)  # a refused attempt does not spend it


def test_expired_with_injected_clock(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock)
    tok = s.issue(SCOPE)
    clock.t += 601
    r, msg = reason(lambda: s.verify(tok, SCOPE))
    assert r == "expired" and "expired 1s ago" in msg


def test_forged_and_truncated(tmp_path):
    s = store(tmp_path)
    tok = s.issue(SCOPE)
    chars = list(tok)
    i = len(chars) - 1
    chars[i] = "a" if chars[i] != "a" else "b"
    r, msg = reason(lambda: s.verify("".join(chars), SCOPE))
    assert r == "forged" and "signature does not match" in msg
    other = TokenStore(tmp_path / "other-cfg", clock=Clock())
    r, _ = reason(lambda: s.verify(other.issue(SCOPE), SCOPE))
    assert r == "forged"
    r, msg = reason(lambda: s.verify(tok[:-3], SCOPE))
    assert r == "malformed" and "truncated" in msg
    r, _ = reason(lambda: s.verify("", SCOPE))
    assert r == "malformed"


def test_revoked_and_listed(tmp_path):
    s = store(tmp_path)
    tok = s.issue(SCOPE)
    tok2 = s.issue(SCOPE)
    rec = s.revoke(tok)
    assert rec["operation"] == "blow-away"
    r, msg = reason(lambda: s.verify(tok, SCOPE))
    assert r == "revoked"
    s.verify(tok2, SCOPE)
    states = sorted(x["state"] for x in s.list())
    assert states == ["revoked", "used"]
    with pytest.raises(BadInput, match="not a fleet token"):
        s.revoke("nope")


def test_loose_secret_permissions_refused(tmp_path):
    s = store(tmp_path)
    s.issue(SCOPE)
    os.chmod(s.secret_path, 0o644)
    with pytest.raises(Refused, match="readable or writable by others.*chmod 600"):
        s.issue(SCOPE)


def _spend(args):
    d, tok = args
    s = TokenStore(d, ttl=600, clock=lambda: 1_800_000_000.0)
    try:
        s.verify(tok, SCOPE)
        return "won"
    except TokenRefused as e:
        return e.reason


def test_two_processes_racing_to_spend_one_token(tmp_path):
    s = store(tmp_path)
    for _ in range(5):
        tok = s.issue(SCOPE)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(_spend, [(s.dir, tok), (s.dir, tok)])
        assert sorted(got) == ["reused", "won"]
