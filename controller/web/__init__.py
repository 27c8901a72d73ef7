"""The controller's web app and JSON API: urgent announcements for commune staff, from a phone.

app.py builds the FastAPI app, pages.py the server-rendered pages, api.py the JSON API,
security.py sessions, CSRF and the sign-in rate limit, i18n.py the Vietnamese and
English words, server.py runs it inside `loa-controller run`. See docs/web.md.
"""
