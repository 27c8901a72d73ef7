"""The controller's web app and JSON API: urgent announcements for commune staff, from a phone.

app.py builds the FastAPI app, pages.py the server-rendered pages, api.py the JSON API,
signin.py the one sign-in both use and limiter.py its limit, security.py sessions and
CSRF, limits.py the size limit of every request body, proxies.py which forwarded headers
are believed, i18n.py the Vietnamese and English words, server.py runs it (over HTTPS
when configured) inside `loa-controller run`. See docs/web.md and docs/architecture.md.
"""
