"""Access and refresh tokens: issue and verify JWTs.

python-jose with the algorithm list pinned, every registered claim required, issuer and
audience checked, and a `kid` header so that retired keys keep verifying until their tokens
expire. Verification is pure CPU; whether a valid token was revoked is the gate's question.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError

from service.infra.config import Settings
from service.rules.scopes import Scope

TokenUse = Literal["access", "refresh"]
MAX_TOKEN_LENGTH = 4096
LEEWAY_SECONDS = 5
VERIFIED_CACHE_SIZE = 4096
_REQUIRED = ("exp", "iat", "nbf", "iss", "aud", "sub", "jti")
_SCOPE_NAMES = frozenset(scope.value for scope in Scope)
_DECODE_OPTIONS = {f"require_{name}": True for name in _REQUIRED} | {"leeway": LEEWAY_SECONDS}


class InvalidTokenError(Exception):
    """The token cannot be trusted; `reason` is a short machine-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str
    scopes: frozenset[Scope]
    jti: str
    use: TokenUse
    version: str
    issued_at: int
    expires_at: int
    not_before: int

    def remaining_ms(self, now: float | None = None) -> int:
        """Milliseconds until expiry (at least 1), the TTL of anything that revokes it."""
        now = time.time() if now is None else now
        return max(1, int((self.expires_at + LEEWAY_SECONDS - now) * 1000))


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    key: Any


def _hs_kid(secret: str) -> str:
    return "hs-" + hashlib.sha256(b"kid:" + secret.encode()).hexdigest()[:16]


def _public_pem(path: Path) -> tuple[str, bytes]:
    """Load a private or public PEM and return (kid, public PEM)."""
    data = path.read_bytes()
    try:
        public = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        public = serialization.load_pem_public_key(data)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16], pem


class TokenService:
    """Issues and verifies access and refresh tokens."""

    def __init__(self, settings: Settings) -> None:
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._access_ttl = settings.access_token_ttl_seconds
        self._refresh_ttl = settings.refresh_token_ttl_seconds
        self._verify_keys: dict[str, Any] = {}
        self._public_pems: dict[str, bytes] = {}
        # Token string -> claims it verified to. A client sends the same token many times;
        # its signature and claims cannot change, only the clock (re-checked on every hit)
        # and revocation (checked in Redis on every request, cache or not).
        self._verified: dict[str, TokenClaims] = {}
        if self._algorithm == "HS256":
            if settings.jwt_secret is None:
                raise ValueError("JWT_SECRET is required for HS256")
            current = settings.jwt_secret.get_secret_value()
            self._signing = _SigningKey(_hs_kid(current), current)
            for secret in (current, *(s.get_secret_value() for s in settings.previous_secrets)):
                self._verify_keys[_hs_kid(secret)] = secret
        else:
            if settings.jwt_private_key_file is None:
                raise ValueError(f"JWT_PRIVATE_KEY_FILE is required for {self._algorithm}")
            kid, pem = _public_pem(settings.jwt_private_key_file)
            self._signing = _SigningKey(kid, settings.jwt_private_key_file.read_text())
            self._public_pems[kid] = pem
            for extra in settings.jwt_previous_public_key_files:
                old_kid, old_pem = _public_pem(Path(extra))
                self._public_pems[old_kid] = old_pem
            self._verify_keys = {k: v.decode() for k, v in self._public_pems.items()}

    def issue_pair(self, username: str, scopes: frozenset[Scope], version: str) -> TokenPair:
        now = int(time.time())
        access = self._encode(username, scopes, version, "access", now, self._access_ttl)
        refresh = self._encode(username, scopes, version, "refresh", now, self._refresh_ttl)
        return TokenPair(access, refresh, self._access_ttl)

    def _encode(
        self,
        username: str,
        scopes: frozenset[Scope],
        version: str,
        use: TokenUse,
        now: int,
        ttl: int,
    ) -> str:
        claims = {
            "sub": username,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "iss": self._issuer,
            "aud": self._audience,
            "token_use": use,
            "ver": version,
        }
        return jwt.encode(
            claims, self._signing.key, algorithm=self._algorithm, headers={"kid": self._signing.kid}
        )

    def decode(self, token: str, expected: TokenUse) -> TokenClaims:
        """Verify signature, algorithm, time claims, issuer, audience and the token's use."""
        cached = self._verified.get(token)
        if cached is not None:
            return _still_valid(cached, expected)
        claims = self._verify(token, expected)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _verify(self, token: str, expected: TokenUse) -> TokenClaims:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # any parse failure of untrusted input means "not a token"
            raise InvalidTokenError("malformed") from None
        kid = header.get("kid") if isinstance(header, dict) else None
        key = self._verify_keys.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != self._algorithm:
            raise InvalidTokenError("unknown_key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options=_DECODE_OPTIONS,
            )
        except ExpiredSignatureError:
            raise InvalidTokenError("expired") from None
        except Exception:  # bad signature, nbf in the future, wrong iss/aud, missing claims
            raise InvalidTokenError("invalid") from None
        return _claims(claims, expected)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """Public keys for other services; empty in HS256 mode (a secret is never published)."""
        keys = []
        for kid, pem in self._public_pems.items():
            entry = jwk.construct(pem, self._algorithm).to_dict()
            entry.update({"kid": kid, "use": "sig", "alg": self._algorithm})
            keys.append(entry)
        return {"keys": keys}


def _still_valid(claims: TokenClaims, expected: TokenUse) -> TokenClaims:
    """The time checks python-jose made when the token was first verified, made again now."""
    now = time.time()
    if claims.use != expected:
        raise InvalidTokenError("wrong_token_use")
    if now > claims.expires_at + LEEWAY_SECONDS:
        raise InvalidTokenError("expired")
    if now < claims.not_before - LEEWAY_SECONDS:
        raise InvalidTokenError("invalid")
    return claims


def _claims(claims: dict[str, Any], expected: TokenUse) -> TokenClaims:
    use, scope, version = claims.get("token_use"), claims.get("scope"), claims.get("ver")
    if use != expected:
        raise InvalidTokenError("wrong_token_use")
    if not isinstance(scope, str) or not isinstance(version, str):
        raise InvalidTokenError("invalid")
    subject, jti = claims["sub"], claims["jti"]
    if not isinstance(subject, str) or not isinstance(jti, str):
        raise InvalidTokenError("invalid")
    return TokenClaims(
        subject=subject,
        scopes=frozenset(Scope(name) for name in scope.split() if name in _SCOPE_NAMES),
        jti=jti,
        use=use,
        version=version,
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
        not_before=int(claims["nbf"]),
    )
