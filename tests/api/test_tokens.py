"""Tokens minted by the core (and its CLI) are exactly what the API's PyJWT verification accepts; the
API's settings refuse to start without a real secret."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from stampede import tokens
from stampede.settings import SettingsError, load
from stampede_api.auth import Authenticator, Buyer
from stampede_api.errors import ApiError
from stampede_api.settings import ApiSettings
from stampede_dev import cli

SECRET = "k" * 40


def settings(**kw: object) -> ApiSettings:
    return load(ApiSettings, env={}, jwt_secret=SECRET, **kw)


def test_core_minted_token_verifies_with_pyjwt_and_the_authenticator() -> None:
    tok = tokens.mint(SECRET, "alice", ttl_s=60)
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"], audience="stampede-api", issuer="stampede")
    assert claims["sub"] == "alice" and claims["scope"] == "buy" and claims["exp"] - claims["iat"] == 60
    auth = Authenticator(settings())
    assert auth.verify(tok).id == "alice"
    assert auth.verify(tok).id == "alice"  # second time from the verified-token cache


def test_cached_token_still_expires() -> None:
    auth = Authenticator(settings(jwt_leeway_s=0))
    import time

    tok = tokens.mint(SECRET, "bob", ttl_s=1, now=int(time.time()))
    assert auth.verify(tok).id == "bob"
    time.sleep(1.1)
    with pytest.raises(ApiError) as exc:
        auth.verify(tok)
    assert exc.value.status == 401


def test_mint_token_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("STAMPEDE_JWT_SECRET", SECRET)
    assert cli.main(["mint-token", "carol", "--ttl", "120"]) == 0
    tok = capsys.readouterr().out.strip()
    assert Authenticator(settings()).verify(tok).id == "carol"
    out = tmp_path / "tokens.tsv"
    assert cli.main(["mint-token", "buyer", "--count", "3", "--out", str(out)]) == 0
    lines = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert [sub for sub, _ in lines] == ["buyer-0", "buyer-1", "buyer-2"]
    assert all(Authenticator(settings()).verify(t).id == s for s, t in lines)


def test_api_settings_demand_a_secret() -> None:
    with pytest.raises(SettingsError, match="STAMPEDE_JWT_SECRET"):
        load(ApiSettings, env={})
    with pytest.raises(SettingsError, match="STAMPEDE_JWT_SECRET"):
        load(ApiSettings, env={"STAMPEDE_JWT_SECRET": "short"})
    s = load(ApiSettings, env={"STAMPEDE_JWT_SECRET": SECRET, "STAMPEDE_WORKERS": "4"})
    assert s.workers == 4 and s.strategies_enabled is False


def test_token_cache_is_bounded_and_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(settings(token_cache_entries=2))
    decoded: list[str] = []
    real = auth._decode

    def counting(token: str) -> tuple[Buyer, float]:  # counts full verifications; the cache is what spares them
        decoded.append(token)
        return real(token)

    monkeypatch.setattr(auth, "_decode", counting)
    a, b, c = (tokens.mint(SECRET, u, ttl_s=60) for u in ("a", "b", "c"))
    for tok in (a, b, a, c):  # c evicts b, the least recently used, not a
        auth.verify(tok)
    assert decoded == [a, b, c]
    assert auth.verify(a).id == "a" and auth.verify(c).id == "c" and len(decoded) == 3
    assert auth.verify(b).id == "b" and decoded[-1] == b
    for n in range(50):
        auth.verify(tokens.mint(SECRET, f"u{n}", ttl_s=60))
    assert len(auth._verified) == 2
    off = Authenticator(settings(token_cache_entries=0))
    assert off.verify(a).id == "a" and len(off._verified) == 0
    with pytest.raises(SettingsError, match="STAMPEDE_TOKEN_CACHE_ENTRIES"):
        settings(token_cache_entries=-1)
