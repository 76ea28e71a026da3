"""/link/github?code=…: the dashboard side of `/shipit link github LOGIN`.

GitHub OAuth vouches for the login; the page shows who asked to be linked and links only on a
POST with the session's CSRF token, so following a link someone else sent links nothing by itself.
The code travels in the query string once: the access log gets it redacted (`redact_codes`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from core import identities
from core.errors import UserError
from web import channel

# code=… in a query string, and in a `next=` path that carries one URL-encoded (code%3D…).
_CODE_IN_QUERY = re.compile(r"((?:[?&]|%3F|%26)(?:code|state)(?:=|%3D))(?:(?!%26)[^&\s])*", re.IGNORECASE)


class RedactCodes(logging.Filter):
    """uvicorn's access log line carries the query string: one-time codes (ours, OAuth's) never do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _CODE_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def redact_codes() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCodes) for f in logger.filters):
        logger.addFilter(RedactCodes())


def add_routes(router: APIRouter, web: channel.Web) -> None:
    redact_codes()

    def page(request: Request, row: channel.Me, status_code: int = 200, **context: Any) -> Response:
        return channel.render(request, "link.html", status_code=status_code, row=row,
                              title="Link identities", **context)  # fmt: skip

    @router.get("/link/github")
    async def link_page(request: Request, code: str = "") -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, _ = await channel.signed_in(request, session)
            if not row.subject.startswith("github:"):
                return page(request, row, needs_github=True, done=False,
                            next_path=f"/link/github?code={code[:40]}")  # fmt: skip
            try:
                requested_by = await identities.pending_link(session, subject=row.subject, code=code[:40])
            except UserError as e:
                return channel.render(request, "error.html", status_code=e.status_code, row=row,
                                      title="Not linked", message=str(e))  # fmt: skip
            return page(request, row, done=False, needs_github=False, requested_by=requested_by,
                        code=code[:40])  # fmt: skip

    @router.post("/link/github")
    async def link_confirm(request: Request) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, _ = await channel.signed_in(request, session)
            form = await channel.form_of(request, row)
            try:
                person = await identities.redeem_link_code(
                    session, subject=row.subject, code=form.get("code", "")[:40], channel="web",
                    verified_by="oauth",
                )  # fmt: skip
            except UserError as e:
                return channel.render(request, "error.html", status_code=e.status_code, row=row,
                                      title="Not linked", message=str(e))  # fmt: skip
            subjects = await identities.subjects_of(session, subject=row.subject)
            return page(request, row, done=True, needs_github=False, subjects=subjects, person=person.id)
