"""Defaults and bounds of OIDC token checks, without heavy imports (the
CLIs declare their options from them)."""

from __future__ import annotations

#: Google's OAuth2 certificates in `{"key id": "PEM certificate"}` form.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
#: Google ID tokens live one hour: the default longest lifetime accepted.
DEFAULT_MAX_TOKEN_LIFETIME = 3600
MAX_TOKEN_LIFETIME_LIMIT = 24 * 3600
DEFAULT_CLOCK_SKEW = 10
MAX_CLOCK_SKEW = 300
