"""Access and refresh tokens: issue and verify JWTs.

python-jose with the algorithm list pinned, every registered claim required, issuer and
audience checked, and a `kid` header so that retired keys keep verifying until their tokens
expire. Verification is pure CPU; whether a valid token's session still lives is the gate's
question.

Every token belongs to a session (`sid`), and carries when that session ends at the latest
(`sxp`), so no refresh can extend it.

The clock rule: a token is accepted from `nbf - LEEWAY_SECONDS` to `exp + LEEWAY_SECONDS`,
in float seconds, decided by `check_clock` alone (python-jose's own whole-second checks,
which accept until just under `exp + leeway + 1`, are turned off). Anything that must
outlive a token, such as a session record, lives past `accepted_until(exp)`.
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

from service.infra.config import Settings
from service.rules.scopes import Scope

TokenUse = Literal["access", "refresh"]
MAX_TOKEN_LENGTH = 4096
LEEWAY_SECONDS = 5
VERIFIED_CACHE_SIZE = 4096
_SCOPE_NAMES = frozenset(scope.value for scope in Scope)
# python-jose checks iss, aud, sub and jti. The time claims are not `require_`d from it: a
# required claim turns python-jose's own whole-second check of it back on (with no leeway),
# whatever `verify_` says. `_claims` requires them, and `check_clock` alone judges them.
_DECODE_OPTIONS = {f"require_{name}": True for name in ("iss", "aud", "sub", "jti")} | {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


def accepted_until(expires_at: float) -> float:
    """The last moment (epoch seconds) at which a token expiring at `expires_at` is taken."""
    return expires_at + LEEWAY_SECONDS


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
    session: str
    session_ends_at: int
    issued_at: int
    expires_at: int
    not_before: int


def check_clock(claims: TokenClaims, now: float | None = None) -> None:
    """The clock rule (see the module docstring); raise InvalidTokenError when it fails."""
    now = time.time() if now is None else now
    if now > accepted_until(claims.expires_at):
        raise InvalidTokenError("expired")
    if now < claims.not_before - LEEWAY_SECONDS:
        raise InvalidTokenError("invalid")


@dataclass(frozen=True, slots=True)
class TokenPair:
    """A new access and refresh token of one session, and when each expires."""

    access_token: str
    refresh_token: str
    refresh_jti: str
    access_scopes: frozenset[Scope]
    issued_at: int
    access_expires_at: int
    refresh_expires_at: int

    @property
    def expires_in(self) -> int:
        return self.access_expires_at - self.issued_at

    @property
    def latest_expiry(self) -> int:
        return max(self.access_expires_at, self.refresh_expires_at)


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

    def issue_pair(
        self,
        username: str,
        scopes: frozenset[Scope],
        version: str,
        *,
        session: str,
        session_ends_at: int,
        access_scopes: frozenset[Scope] | None = None,
    ) -> TokenPair:
        """Tokens of `session`; neither outlives `session_ends_at`. The refresh token
        carries the session's grant (`scopes`); the access token `access_scopes`, a subset
        a client asked for, or the whole grant."""
        now = int(time.time())
        access_exp = min(now + self._access_ttl, session_ends_at)
        refresh_exp = min(now + self._refresh_ttl, session_ends_at)
        refresh_jti = uuid.uuid4().hex
        common = {
            "sub": username,
            "iat": now,
            "nbf": now,
            "iss": self._issuer,
            "aud": self._audience,
            "ver": version,
            "sid": session,
            "sxp": session_ends_at,
        }
        granted = scopes if access_scopes is None else access_scopes
        access = self._sign(
            common
            | {
                "scope": " ".join(sorted(granted)),
                "exp": access_exp,
                "jti": uuid.uuid4().hex,
                "token_use": "access",  # nosec B105: the claim naming the token kind, not a secret
            }
        )
        refresh = self._sign(
            common
            | {
                "scope": " ".join(sorted(scopes)),
                "exp": refresh_exp,
                "jti": refresh_jti,
                "token_use": "refresh",  # nosec B105: the claim naming the token kind, not a secret
            }
        )
        return TokenPair(access, refresh, refresh_jti, granted, now, access_exp, refresh_exp)

    def _sign(self, claims: dict[str, Any]) -> str:
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
        except Exception:  # bad signature, wrong iss/aud, missing claims
            raise InvalidTokenError("invalid") from None
        verified = _claims(claims, expected)
        check_clock(verified)
        return verified

    @property
    def publishes_keys(self) -> bool:
        """Whether verification keys are public (ES256/RS256), served as a JWKS."""
        return bool(self._public_pems)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """Public keys for other services; empty in HS256 mode (a secret is never published)."""
        keys = []
        for kid, pem in self._public_pems.items():
            entry = jwk.construct(pem, self._algorithm).to_dict()
            entry.update({"kid": kid, "use": "sig", "alg": self._algorithm})
            keys.append(entry)
        return {"keys": keys}


def _still_valid(claims: TokenClaims, expected: TokenUse) -> TokenClaims:
    """A cached token: its signature and claims cannot change, its use and the clock can."""
    if claims.use != expected:
        raise InvalidTokenError("wrong_token_use")
    check_clock(claims)
    return claims


def _claims(claims: dict[str, Any], expected: TokenUse) -> TokenClaims:
    use = claims.get("token_use")
    if use != expected:
        raise InvalidTokenError("wrong_token_use")
    strings = [claims.get(name) for name in ("sub", "jti", "scope", "ver", "sid")]
    times = [claims.get(name) for name in ("iat", "exp", "nbf", "sxp")]
    if not all(isinstance(value, str) for value in strings) or not all(
        isinstance(value, int) and not isinstance(value, bool) for value in times
    ):
        raise InvalidTokenError("invalid")
    subject, jti, scope, version, session = (str(value) for value in strings)
    issued_at, expires_at, not_before, session_ends_at = (int(value) for value in times)  # type: ignore[arg-type]
    return TokenClaims(
        subject=subject,
        scopes=frozenset(Scope(name) for name in scope.split() if name in _SCOPE_NAMES),
        jti=jti,
        use=use,
        version=version,
        session=session,
        session_ends_at=session_ends_at,
        issued_at=issued_at,
        expires_at=expires_at,
        not_before=not_before,
    )
