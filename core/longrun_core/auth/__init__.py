"""Authentication and authorization: who is calling (OIDC ID tokens, API
keys, transport identities) and what they may do (roles from a policy file
and from each API key's own binding). See docs/security.md."""
