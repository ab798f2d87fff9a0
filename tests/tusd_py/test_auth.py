"""Authentication (static token, JWT HS256/RS256/ES256, Python hook) and per-upload owners."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ServerProcess

from .helpers import OFFSET_CT, TUS, assert_error_body, b64, serve_refusing

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {**TUS, "Authorization": f"Bearer {token}"}


def hs256(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


def create(client: httpx.Client, srv: ServerProcess, auth: dict[str, str], size: int = 10,
           **extra: str) -> httpx.Response:
    return client.post(srv.url, headers={**auth, "Upload-Length": str(size), **extra})


def upload(client: httpx.Client, srv: ServerProcess, auth: dict[str, str],
           data: bytes) -> str:
    r = create(client, srv, auth, len(data), **{"Upload-Metadata": f"filename {b64('a.bin')}"})
    assert r.status_code == 201, r.text
    url = srv.origin + r.headers["Location"] if r.headers["Location"].startswith("/") \
        else r.headers["Location"]
    r = client.patch(url, headers={**auth, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                     content=data)
    assert r.status_code == 204, r.text
    return url


@pytest.fixture(scope="module")
def token_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--auth-token", "letmein", "--no-processing")


@pytest.fixture(scope="module")
def jwt_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--jwt-secret", SECRET, "--jwt-audience", "uploads",
                          "--jwt-issuer", "https://auth.example")


def test_static_token_is_required(client: httpx.Client, token_server: ServerProcess) -> None:
    r = create(client, token_server, dict(TUS))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.text.startswith("ERR_UNAUTHORIZED: missing Authorization")
    assert_error_body(r)
    r = create(client, token_server, bearer("wrong"))
    assert r.status_code == 401
    assert "invalid token" in r.text
    r = create(client, token_server, {**TUS, "Authorization": "Basic bGV0bWVpbg=="})
    assert r.status_code == 401
    data = b"token upload"
    url = upload(client, token_server, bearer("letmein"), data)
    r = client.head(url, headers=bearer("letmein"))
    assert r.status_code == 200 and r.headers["Upload-Offset"] == str(len(data))
    assert client.head(url, headers=TUS).status_code == 401
    got = client.get(url, headers=bearer("letmein"))
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_preflight_and_health_need_no_token(client: httpx.Client,
                                            token_server: ServerProcess) -> None:
    r = client.options(token_server.url, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, tus-resumable, upload-length"})
    assert r.status_code == 200  # a CORS preflight
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert client.options(token_server.url, headers=TUS).status_code == 204
    assert client.get(token_server.origin + "/healthz").status_code == 200
    assert client.get(token_server.origin + "/readyz").status_code == 200
    assert client.get(token_server.origin + "/api/uploads").status_code == 401


def test_a_401_is_readable_by_browsers(client: httpx.Client,
                                       token_server: ServerProcess) -> None:
    r = client.post(token_server.url, headers={**TUS, "Upload-Length": "1",
                                               "Origin": "https://app.example"})
    assert r.status_code == 401
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")


def test_jwt_subject_owns_its_uploads(client: httpx.Client, jwt_server: ServerProcess) -> None:
    claims = {"aud": "uploads", "iss": "https://auth.example"}
    alice, bob = bearer(hs256("alice", **claims)), bearer(hs256("bob", **claims))
    data = b"alice's bytes"
    url = upload(client, jwt_server, alice, data)
    assert client.head(url, headers=alice).status_code == 200
    # Someone else's upload looks like no upload at all: 404 everywhere, not 403.
    assert client.head(url, headers=bob).status_code == 404
    assert client.get(url, headers=bob).status_code == 404
    r = client.patch(url, headers={**bob, "Content-Type": OFFSET_CT,
                                   "Upload-Offset": str(len(data))}, content=b"")
    assert r.status_code == 404
    assert client.delete(url, headers=bob).status_code == 404
    uid = url.rsplit("/", 1)[-1]
    api = f"{jwt_server.origin}/api/uploads"
    assert client.get(f"{api}/{uid}", headers=bob).status_code == 404
    assert client.post(f"{api}/{uid}/reprocess", headers=bob).status_code == 404
    assert uid not in {u["id"] for u in client.get(api, headers=bob).json()["uploads"]}
    assert uid in {u["id"] for u in client.get(api, headers=alice).json()["uploads"]}
    # ...and nothing Bob did changed Alice's upload.
    got = client.get(url, headers=alice)
    assert got.status_code == 200 and got.content == data
    assert client.delete(url, headers=alice).status_code == 204


def test_concatenation_only_of_own_partials(client: httpx.Client,
                                            jwt_server: ServerProcess) -> None:
    claims = {"aud": "uploads", "iss": "https://auth.example"}
    alice, bob = bearer(hs256("alice", **claims)), bearer(hs256("bob", **claims))
    r = create(client, jwt_server, alice, 3, **{"Upload-Concat": "partial"})
    assert r.status_code == 201
    partial = r.headers["Location"]
    r = client.post(jwt_server.url, headers={**bob, "Upload-Concat": f"final;{partial}"})
    assert r.status_code == 404, r.text
    r = client.post(jwt_server.url, headers={**alice, "Upload-Concat": f"final;{partial}"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("token", [
    pytest.param(lambda: hs256("alice"), id="no-audience"),
    pytest.param(lambda: hs256("alice", aud="uploads", iss="https://evil.example"), id="issuer"),
    pytest.param(lambda: jwt.encode({"sub": "alice", "aud": "uploads", "iss":
                 "https://auth.example", "exp": int(time.time()) - 3600}, SECRET, "HS256"),
                 id="expired"),
    pytest.param(lambda: jwt.encode({"sub": "alice", "aud": "uploads",
                 "iss": "https://auth.example"}, SECRET, "HS256"), id="no-exp"),
    pytest.param(lambda: jwt.encode({"sub": "alice", "aud": "uploads", "iss":
                 "https://auth.example", "exp": int(time.time()) + 60}, "other-secret-"
                 "of-sufficient-length-1234", "HS256"), id="wrong-key"),
    pytest.param(lambda: "not.a.jwt", id="garbage"),
])
def test_bad_jwts_are_refused(client: httpx.Client, jwt_server: ServerProcess,
                              token: Callable[[], str]) -> None:
    r = create(client, jwt_server, bearer(token()))
    assert r.status_code == 401, r.text
    assert r.text.startswith("ERR_UNAUTHORIZED: invalid token")
    assert_error_body(r)


def _pem_pair(tmp_path: Path, kind: str, name: str = "server") -> tuple[Any, Path]:
    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if kind == "RS256" else ec.generate_private_key(ec.SECP256R1()))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / f"{name}-{kind}.pem"
    path.write_bytes(pem)
    return key, path


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_jwt_signed_by_a_public_key(start_server: Callable[..., ServerProcess],
                                    tmp_path: Path, algorithm: str) -> None:
    key, pem = _pem_pair(tmp_path, algorithm)
    srv = start_server("--jwt-public-key", str(pem), "--no-processing")
    good = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, key, algorithm)
    other, _ = _pem_pair(tmp_path, algorithm, "attacker")
    forged = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, other, algorithm)
    with httpx.Client(timeout=10) as client:
        url = upload(client, srv, bearer(good), b"signed")
        assert client.head(url, headers=bearer(good)).status_code == 200
        assert create(client, srv, bearer(forged)).status_code == 401
        assert create(client, srv, {**TUS, "Authorization": "Bearer x.y.z"}).status_code == 401


HOOK_MODULE = """
from tusd_py.auth import Unauthorized

async def allow(request):
    key = request.headers.get("x-api-key", "")
    if key.startswith("user-"):
        return key[len("user-"):]
    if key == "crash":
        raise RuntimeError("the auth backend is down")
    return None
"""


def test_auth_hook_decides_and_fails_closed(start_server: Callable[..., ServerProcess],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    hooks_dir = tmp_path / "hookmod"
    hooks_dir.mkdir()
    (hooks_dir / "myauth.py").write_text(textwrap.dedent(HOOK_MODULE))
    monkeypatch.setenv("PYTHONPATH", f"{hooks_dir}:{':'.join(sys.path)}")
    srv = start_server("--auth-hook", "myauth:allow", "--no-processing")
    with httpx.Client(timeout=10) as client:
        dave = {**TUS, "X-Api-Key": "user-dave"}
        url = upload(client, srv, dave, b"hooked")
        assert client.head(url, headers=dave).status_code == 200
        assert client.head(url, headers={**TUS, "X-Api-Key": "user-eve"}).status_code == 404
        r = create(client, srv, {**TUS, "X-Api-Key": "nope"})
        assert r.status_code == 401 and "refused by the auth hook" in r.text
        r = create(client, srv, {**TUS, "X-Api-Key": "crash"})
        assert r.status_code == 503, r.text
        assert_error_body(r)
    assert "auth.crashed" in srv.log() and "the auth backend is down" in srv.log()


def test_bad_auth_hook_refuses_to_start(tmp_path: Path) -> None:
    proc = serve_refusing(tmp_path, "--auth-hook", "no_such_module_xyz:f")
    assert proc.returncode == 2
    assert "no_such_module_xyz" in proc.stderr
