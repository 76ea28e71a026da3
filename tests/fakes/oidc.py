"""A fake OpenID Connect provider (and GitHub's OAuth endpoints), over real HTTP on loopback.

Discovery, JWKS, an authorize endpoint that signs the configured person in at once (redirecting back
with a code), and a token endpoint that checks the client secret, the redirect URI and PKCE, then
issues an RS256 ID token signed with a key made by `cryptography`.  Switches make it misbehave the
ways a real relying party must refuse: a wrong audience, a wrong signature, an expired token, a wrong
nonce, an unverified email.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.fakes._server import Answer, Call, FakeServer, lower_headers

CLIENT_ID = "shipit-dashboard"
CLIENT_SECRET = "oidc-client-secret-for-tests"
KID = "test-key-1"


@dataclasses.dataclass
class OidcUser:
    email: str
    name: str = ""
    email_verified: bool = True
    sub: str = ""


@dataclasses.dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str | None
    method: str | None
    user: OidcUser | None
    github_login: str | None
    used: bool = False


class FakeOidc(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_id, self.client_secret = CLIENT_ID, CLIENT_SECRET
        self.user: OidcUser | None = OidcUser(email="alice@example.com", name="Alice")
        self.github_login: str | None = "octocat"
        # Misbehaviours, each for every token until switched back off.
        self.wrong_audience = False
        self.wrong_signature = False
        self.expired = False
        self.wrong_nonce = False
        self._grants: dict[str, _Grant] = {}
        self._access: dict[str, str] = {}  # GitHub access token -> login

    @property
    def issuer(self) -> str:
        return self.origin

    def sign_in_as(self, email: str, *, name: str = "", verified: bool = True) -> None:
        with self._lock:
            self.user = OidcUser(email=email, name=name or email.split("@")[0], email_verified=verified)

    def _serve(self, request: web.Request, raw: bytes) -> Answer:
        path = request.path
        form = dict(parse_qsl(raw.decode())) if raw else {}
        query = dict(request.query)
        routes = {
            "/.well-known/openid-configuration": ("discovery", self._discovery),
            "/jwks": ("jwks", self._jwks),
            "/authorize": ("authorize", self._authorize),
            "/token": ("token", self._token),
            "/login/oauth/authorize": ("github_authorize", self._github_authorize),
            "/login/oauth/access_token": ("github_token", self._github_token),
            "/user": ("github_user", self._github_user),
        }
        name, handler = routes.get(path, ("unknown", None))
        answer = self._take_failure(name)
        injected = answer is not None
        if answer is None:
            answer = (
                handler(request=request, query=query, form=form)
                if handler
                else Answer(404, {"error": "not_found"})
            )
        self._record(
            Call(
                api=name,
                http_method=request.method,
                path=path,
                query=query,
                headers=lower_headers(request),
                body=form or query,
                raw_body=raw,
                status=answer.status,
                response=answer.body,
                injected=injected,
            )
        )
        return answer

    # ---- OpenID Connect --------------------------------------------------------------------------

    def _discovery(self, **_: Any) -> Answer:
        o = self.origin
        return Answer(200, {
            "issuer": o, "authorization_endpoint": f"{o}/authorize", "token_endpoint": f"{o}/token",
            "jwks_uri": f"{o}/jwks", "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })  # fmt: skip

    def _jwks(self, **_: Any) -> Answer:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return Answer(200, {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})

    def _redirect_with_code(self, query: dict[str, str], grant: _Grant) -> Answer:
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._grants[code] = grant
        sep = "&" if "?" in grant.redirect_uri else "?"
        target = grant.redirect_uri + sep + urlencode({"code": code, "state": query.get("state", "")})
        return Answer(302, None, {"Location": target})

    def _authorize(self, *, query: dict[str, str], **_: Any) -> Answer:
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return Answer(400, {"error": "invalid_request"})
        if self.user is None:
            target = (
                query["redirect_uri"]
                + "?"
                + urlencode({"error": "access_denied", "state": query.get("state", "")})
            )
            return Answer(302, None, {"Location": target})
        grant = _Grant(client_id=query["client_id"], redirect_uri=query["redirect_uri"], nonce=query.get("nonce"),
                       challenge=query.get("code_challenge"), method=query.get("code_challenge_method"),
                       user=self.user, github_login=None)  # fmt: skip
        return self._redirect_with_code(query, grant)

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        return cid == self.client_id and secrets.compare_digest(secret, self.client_secret)

    def _take_grant(self, request: web.Request, form: dict[str, str]) -> _Grant | Answer:
        if not self._client_ok(request, form):
            return Answer(401, {"error": "invalid_client"})
        with self._lock:
            grant = self._grants.get(form.get("code", ""))
            if grant is None or grant.used:
                return Answer(400, {"error": "invalid_grant"})
            grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return Answer(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
        # PKCE (RFC 7636): the verifier must hash to the challenge sent to /authorize.
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant.method != "S256" or not grant.challenge or digest != grant.challenge:
            return Answer(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
        return grant

    def _token(self, *, request: web.Request, form: dict[str, str], **_: Any) -> Answer:
        if form.get("grant_type") != "authorization_code":
            return Answer(400, {"error": "unsupported_grant_type"})
        grant = self._take_grant(request, form)
        if isinstance(grant, Answer):
            return grant
        assert grant.user is not None
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": grant.user.sub or hashlib.sha256(grant.user.email.encode()).hexdigest()[:20],
            "aud": "someone-else" if self.wrong_audience else self.client_id,
            "iat": now - (7200 if self.expired else 0),
            "exp": now - 3600 if self.expired else now + 300,
            "nonce": "not-the-nonce" if self.wrong_nonce else grant.nonce,
            "email": grant.user.email,
            "email_verified": grant.user.email_verified,
            "name": grant.user.name,
        }
        key = self.other_key if self.wrong_signature else self.key
        id_token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
        return Answer(200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                            "expires_in": 300, "id_token": id_token})  # fmt: skip

    # ---- GitHub OAuth ----------------------------------------------------------------------------

    def _github_authorize(self, *, query: dict[str, str], **_: Any) -> Answer:
        if query.get("client_id") != self.client_id:
            return Answer(404, {"error": "unknown client"})
        grant = _Grant(client_id=query["client_id"], redirect_uri=query["redirect_uri"], nonce=None,
                       challenge=query.get("code_challenge"), method=query.get("code_challenge_method"),
                       user=None, github_login=self.github_login)  # fmt: skip
        return self._redirect_with_code(query, grant)

    def _github_token(self, *, request: web.Request, form: dict[str, str], **_: Any) -> Answer:
        grant = self._take_grant(request, form)
        if isinstance(grant, Answer):
            # GitHub answers errors with 200 and an error field.
            return Answer(200, grant.body)
        token = "gho_" + secrets.token_urlsafe(16)
        with self._lock:
            self._access[token] = grant.github_login or ""
        return Answer(200, {"access_token": token, "token_type": "bearer", "scope": "read:user"})

    def _github_user(self, *, request: web.Request, **_: Any) -> Answer:
        auth = request.headers.get("Authorization", "")
        token = auth.split(" ", 1)[-1] if auth else ""
        with self._lock:
            login = self._access.get(token)
        if not login:
            return Answer(401, {"message": "Bad credentials"})
        return Answer(200, {"login": login, "id": 1, "type": "User"})
