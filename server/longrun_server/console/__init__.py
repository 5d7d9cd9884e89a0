"""The operations console served by the HTTP gateway at `/console/`.

Static pages and one script, no build step (docs/console.md). The pages hold
no data: the script (static/console.js) fetches everything from the
gateway's own REST routes with the credential the user pasted (kept in
sessionStorage, sent as a header), so the console sees exactly what the
API lets that principal see, through server/auth_interceptor.py.
"""
