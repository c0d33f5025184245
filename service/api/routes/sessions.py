"""Sessions: a user's own (`/users/me/sessions`) and, for admins, anyone's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status

from service.api.deps import AdminUser, CurrentUser, Principal, RuntimeDep
from service.api.schemas import SessionOut
from service.auth.sessions import Session
from service.rules.accounts import USERNAME_PATTERN

router = APIRouter(prefix="/users", tags=["sessions"])

UsernamePath = Annotated[str, Path(pattern=USERNAME_PATTERN)]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
}
_ADMIN: dict[int | str, dict[str, Any]] = _AUTH | {403: {"description": "Token lacks admin"}}
_NO_SESSION: dict[int | str, dict[str, Any]] = {404: {"description": "No such live session"}}


def _out(session: Session, caller: Principal, owner: str) -> SessionOut:
    return SessionOut(
        sid=session.sid,
        created_at=datetime.fromtimestamp(session.created_at, UTC),
        last_used_at=datetime.fromtimestamp(session.last_used_at, UTC),
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
        current=owner == caller.username and session.sid == caller.claims.session,
        ip=session.ip,
        user_agent=session.user_agent,
    )


async def _listing(runtime: RuntimeDep, caller: Principal, owner: str) -> list[SessionOut]:
    return [_out(s, caller, owner) for s in await runtime.sessions.list(owner)]


async def _end(runtime: RuntimeDep, owner: str, sid: str) -> Response:
    if not await runtime.sessions.end(owner, sid):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such session")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me/sessions", response_model=list[SessionOut], responses=_AUTH)
async def my_sessions(user: CurrentUser, runtime: RuntimeDep) -> list[SessionOut]:
    """The caller's live sessions, oldest first; `current` marks this token's."""
    return await _listing(runtime, user, user.username)


@router.delete(
    "/me/sessions/{sid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_AUTH | _NO_SESSION,
)
async def end_my_session(sid: SessionId, user: CurrentUser, runtime: RuntimeDep) -> Response:
    """End one of the caller's sessions (404 if it is not a live session of the caller)."""
    return await _end(runtime, user.username, sid)


@router.get("/{username}/sessions", response_model=list[SessionOut], responses=_ADMIN)
async def user_sessions(
    username: UsernamePath, admin: AdminUser, runtime: RuntimeDep
) -> list[SessionOut]:
    """A user's live sessions (empty for an unknown user)."""
    return await _listing(runtime, admin, username.lower())


@router.delete(
    "/{username}/sessions/{sid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ADMIN | _NO_SESSION,
)
async def end_user_session(
    username: UsernamePath, sid: SessionId, _: AdminUser, runtime: RuntimeDep
) -> Response:
    return await _end(runtime, username.lower(), sid)
