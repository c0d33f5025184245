"""User administration (scope `admin`) and the caller's own profile."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response, status

from service.api.deps import AdminUser, CurrentUser, RuntimeDep
from service.api.paths import UsernamePath
from service.api.responses import ADMIN, AUTHENTICATED, BODY, errors
from service.api.schemas import UserCreate, UserDetail, UserOut, UserUpdate
from service.auth.users import AdminChangeRefused, User
from service.rules.accounts import check_password
from service.rules.rates import Rate

router = APIRouter(prefix="/users", tags=["users"])


def _detail(user: User) -> UserDetail:
    return UserDetail(
        username=user.username,
        scopes=sorted(user.scopes),
        disabled=user.disabled,
        created_at=datetime.fromtimestamp(user.created_at, UTC),
        rate_limit=user.rate_limit,
    )


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "No such user")


def _conflict(exc: AdminChangeRefused) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


def _check_password(username: str, password: str) -> None:
    """The password rule a JSON schema cannot state, answered in FastAPI's 422 list form."""
    try:
        check_password(username, password)
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"type": "value_error", "loc": ["body", "password"], "msg": str(exc)}],
        ) from None


@router.get("/me", response_model=UserOut, responses=AUTHENTICATED)
async def me(user: CurrentUser) -> UserOut:
    return UserOut(username=user.username, scopes=sorted(user.scopes), disabled=False)


_NOT_FOUND = ADMIN | errors(s404="No such user")
# OpenAPI links: what a client (and schemathesis' stateful runs) can do with a new user.
_USER_LINKS = {
    name: {"operationId": operation, "parameters": {"username": "$response.body#/username"}}
    for name, operation in (
        ("UpdateUser", "updateUser"),
        ("DeleteUser", "deleteUser"),
        ("RevokeUserTokens", "revokeUserTokens"),
        ("ListUserSessions", "listUserSessions"),
    )
}
_ADMIN_CHANGE = _NOT_FOUND | errors(
    s409="It would leave no enabled admin, or an admin would demote itself"
)


@router.post(
    "",
    response_model=UserDetail,
    status_code=status.HTTP_201_CREATED,
    responses=ADMIN
    | BODY
    | errors(s409="A user with that name exists")
    | {201: {"links": _USER_LINKS}},
)
async def create_user(body: UserCreate, _: AdminUser, runtime: RuntimeDep) -> UserDetail:
    _check_password(body.username, body.password)
    if not await runtime.users.create(body.username, body.password, frozenset(body.scopes)):
        raise HTTPException(status.HTTP_409_CONFLICT, "A user with that name already exists")
    user = await runtime.users.get(body.username)
    if user is None:  # deleted between the two calls
        raise _not_found()
    return _detail(user)


@router.get("", response_model=list[UserDetail], responses=ADMIN)
async def list_users(_: AdminUser, runtime: RuntimeDep) -> list[UserDetail]:
    return [_detail(user) for user in await runtime.users.list()]


@router.patch(
    "/{username:username}",
    response_model=UserDetail,
    responses=_ADMIN_CHANGE | BODY,
    operation_id="updateUser",
)
async def update_user(
    username: UsernamePath, body: UserUpdate, admin: AdminUser, runtime: RuntimeDep
) -> UserDetail:
    """Disable/enable, set password or scopes (these revoke the user's tokens and end its
    sessions), set a rate. 409 for a change that would leave no enabled admin, or that an
    admin makes to demote or disable itself."""
    name = username.lower()
    if body.password is not None:
        _check_password(name, body.password)
    try:
        updated = await runtime.users.update(
            name,
            actor=admin.username,
            disabled=body.disabled,
            password=body.password,
            scopes=frozenset(body.scopes) if body.scopes is not None else None,
            rate_limit=Rate.parse(body.rate_limit) if body.rate_limit else None,
            clear_rate_limit="rate_limit" in body.model_fields_set and body.rate_limit is None,
        )
    except AdminChangeRefused as exc:
        raise _conflict(exc) from None
    user = await runtime.users.get(name) if updated else None
    if user is None:
        raise _not_found()
    return _detail(user)


@router.delete(
    "/{username:username}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ADMIN_CHANGE,
    operation_id="deleteUser",
)
async def delete_user(username: UsernamePath, admin: AdminUser, runtime: RuntimeDep) -> Response:
    """Delete the user and end its sessions; 409 as for PATCH."""
    try:
        deleted = await runtime.delete_user(username.lower(), actor=admin.username)
    except AdminChangeRefused as exc:
        raise _conflict(exc) from None
    if not deleted:
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{username:username}/revoke-tokens",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_NOT_FOUND,
    operation_id="revokeUserTokens",
)
async def revoke_tokens(username: UsernamePath, _: AdminUser, runtime: RuntimeDep) -> Response:
    """Every token issued to the user so far stops working, on every instance, at once."""
    if not await runtime.users.revoke_tokens(username.lower()):
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
