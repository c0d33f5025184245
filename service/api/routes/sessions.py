"""Sessions: a user's own (`/users/me/sessions`) and, for admins, anyone's."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response, status

from service.api.deps import AdminUser, CurrentUser, Principal, RuntimeDep
from service.api.paths import SessionIdPath, UsernamePath
from service.api.responses import ADMIN, AUTHENTICATED, Responses, errors
from service.api.schemas import SessionOut
from service.auth.sessions import Session

router = APIRouter(prefix="/users", tags=["sessions"])


_NO_SESSION = errors(s404="No such live session")


def _links(operation: str, **parameters: str) -> Responses:
    """OpenAPI link from a session listing to ending its first session."""
    return {
        200: {
            "links": {
                "EndFirstSession": {
                    "operationId": operation,
                    "parameters": {"sid": "$response.body#/0/sid", **parameters},
                }
            }
        }
    }


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


@router.get(
    "/me/sessions",
    response_model=list[SessionOut],
    responses=AUTHENTICATED | _links("endMySession"),
)
async def my_sessions(user: CurrentUser, runtime: RuntimeDep) -> list[SessionOut]:
    """The caller's live sessions, oldest first; `current` marks this token's."""
    return await _listing(runtime, user, user.username)


@router.delete(
    "/me/sessions/{sid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=AUTHENTICATED | _NO_SESSION,
    operation_id="endMySession",
)
async def end_my_session(sid: SessionIdPath, user: CurrentUser, runtime: RuntimeDep) -> Response:
    """End one of the caller's sessions (404 if it is not a live session of the caller)."""
    return await _end(runtime, user.username, sid)


@router.get(
    "/{username:username}/sessions",
    response_model=list[SessionOut],
    responses=ADMIN | _links("endUserSession", username="$request.path.username"),
    operation_id="listUserSessions",
)
async def user_sessions(
    username: UsernamePath, admin: AdminUser, runtime: RuntimeDep
) -> list[SessionOut]:
    """A user's live sessions (empty for an unknown user)."""
    return await _listing(runtime, admin, username.lower())


@router.delete(
    "/{username:username}/sessions/{sid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=ADMIN | _NO_SESSION,
    operation_id="endUserSession",
)
async def end_user_session(
    username: UsernamePath, sid: SessionIdPath, _: AdminUser, runtime: RuntimeDep
) -> Response:
    return await _end(runtime, username.lower(), sid)
