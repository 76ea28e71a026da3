"""Signing in: OpenID Connect (any provider, by discovery) and GitHub OAuth, with Authlib.

Both are the authorization code flow with state and PKCE; OIDC adds a nonce and a checked ID token
(signature against the provider's JWKS; issuer, audience, expiry and nonce).  A person becomes
`user:<verified email>` (OIDC) or `github:<login>`, and holds exactly the roles that subject holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
)
from joserfc.jwk import KeySet

from core import tls

TIMEOUT = httpx.Timeout(10.0)
DISCOVERY_TTL_SECONDS = 3600.0
LEEWAY_SECONDS = 60


class SignInRefused(Exception):
    """Sign-in did not work; the message is shown to the person as written (never a secret)."""


@dataclass(frozen=True, kw_only=True)
class Person:
    subject: str
    display: str
    provider: str


@dataclass(frozen=True, kw_only=True)
class Started:
    url: str  # where to send the browser
    state: str
    nonce: str | None
    code_verifier: str


def _generate(n: int = 32) -> str:
    import secrets

    return secrets.token_urlsafe(n)


@dataclass(kw_only=True)
class Oidc:
    issuer: str
    client_id: str
    client_secret: str | None
    scopes: str = "openid email profile"
    name: str = "oidc"
    label: str = "Single sign-on"
    _metadata: dict[str, Any] | None = field(default=None, repr=False)
    _metadata_at: float = 0.0
    _jwks: dict[str, Any] | None = field(default=None, repr=False)

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=self.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=TIMEOUT,
            verify=tls.client_context(),
        )

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._metadata_at > DISCOVERY_TTL_SECONDS:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=TIMEOUT, verify=tls.client_context()) as client:
                    resp = await client.get(url)
                    resp.raise_for_status()
                    doc = resp.json()
            except (httpx.HTTPError, ValueError) as e:
                raise SignInRefused(f"the sign-in provider could not be reached ({type(e).__name__})") from e
            # The discovery document must be the issuer's own (OpenID Connect Discovery, section 4.3).
            if doc.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
                raise SignInRefused("the sign-in provider's discovery document names another issuer")
            self._metadata, self._metadata_at, self._jwks = doc, time.monotonic(), None
        return self._metadata

    async def start(self, *, redirect_uri: str) -> Started:
        meta = await self.metadata()
        state, nonce, verifier = _generate(), _generate(), _generate(48)
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, code_verifier=verifier, nonce=nonce
            )
        return Started(url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def _keys(self, *, force: bool = False) -> KeySet:
        if self._jwks is None or force:
            meta = await self.metadata()
            async with httpx.AsyncClient(timeout=TIMEOUT, verify=tls.client_context()) as client:
                resp = await client.get(meta["jwks_uri"])
                resp.raise_for_status()
                self._jwks = resp.json()
        return KeySet.import_key_set(self._jwks)  # type: ignore[arg-type]

    async def finish(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str | None) -> Person:
        meta = await self.metadata()
        try:
            async with self._client(redirect_uri) as client:
                token = await client.fetch_token(
                    meta["token_endpoint"], code=code, code_verifier=code_verifier
                )
        except Exception as e:  # Authlib raises OAuthError, httpx its own: either way, no sign-in
            raise SignInRefused(f"the sign-in provider refused the code ({type(e).__name__})") from e
        id_token = token.get("id_token")
        if not id_token:
            raise SignInRefused("the sign-in provider sent no ID token")
        claims = await self._verify(id_token, nonce=nonce, access_token=token.get("access_token"), algs=meta)
        email = claims.get("email")
        if not email or claims.get("email_verified") is not True:
            raise SignInRefused("the sign-in provider did not vouch for an email address (email_verified)")
        return Person(
            subject=f"user:{str(email).lower()}", display=str(claims.get("name") or email), provider="oidc"
        )

    async def _verify(
        self, id_token: str, *, nonce: str | None, access_token: str | None, algs: dict[str, Any]
    ) -> dict[str, Any]:
        allowed = [a for a in algs.get("id_token_signing_alg_values_supported") or ["RS256"] if a != "none"]
        try:
            try:
                decoded = jwt.decode(id_token, await self._keys(), algorithms=allowed)
            except InvalidKeyIdError:
                # The provider may have rotated its keys since we fetched them.
                decoded = jwt.decode(id_token, await self._keys(force=True), algorithms=allowed)
        except BadSignatureError as e:
            raise SignInRefused("the ID token's signature does not match the provider's keys") from e
        except (JoseError, ValueError) as e:
            raise SignInRefused(f"the ID token could not be read ({type(e).__name__})") from e
        params: dict[str, Any] = {"client_id": self.client_id, "nonce": nonce}
        if access_token:
            params["access_token"] = access_token
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
            },
            params,
        )
        try:
            claims.validate(leeway=LEEWAY_SECONDS)
        except ExpiredTokenError as e:
            raise SignInRefused("the ID token has expired") from e
        except ClaimError as e:
            which = getattr(e, "claim", None) or str(e)
            raise SignInRefused(f"the ID token's {which} claim is not for this service") from e
        return dict(claims)


@dataclass(kw_only=True)
class GitHub:
    client_id: str
    client_secret: str
    oauth_url: str  # https://github.com (GHE: https://ghe.example.com)
    api_url: str  # https://api.github.com (GHE: https://ghe.example.com/api/v3)
    name: str = "github"
    label: str = "GitHub"

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope="read:user",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_post",
            timeout=TIMEOUT,
            verify=tls.client_context(),
        )

    async def start(self, *, redirect_uri: str) -> Started:
        state, verifier = _generate(), _generate(48)
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                self.oauth_url.rstrip("/") + "/login/oauth/authorize", state=state, code_verifier=verifier
            )
        return Started(url=url, state=state, nonce=None, code_verifier=verifier)

    async def finish(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str | None) -> Person:
        try:
            async with self._client(redirect_uri) as client:
                await client.fetch_token(
                    self.oauth_url.rstrip("/") + "/login/oauth/access_token",
                    code=code,
                    code_verifier=code_verifier,
                    headers={"Accept": "application/json"},
                )
                resp = await client.get(
                    self.api_url.rstrip("/") + "/user", headers={"Accept": "application/vnd.github+json"}
                )
                resp.raise_for_status()
                login = resp.json().get("login")
        except Exception as e:
            raise SignInRefused(f"GitHub refused the sign-in ({type(e).__name__})") from e
        if not isinstance(login, str) or not login:
            raise SignInRefused("GitHub did not say who you are")
        return Person(subject=f"github:{login.lower()}", display=login, provider="github")


Provider = Oidc | GitHub


def github_oauth_url(api_url: str) -> str:
    """https://api.github.com → https://github.com; GHE's https://host/api/v3 → https://host."""
    api_url = api_url.rstrip("/")
    if api_url == "https://api.github.com":
        return "https://github.com"
    return api_url.removesuffix("/api/v3")
