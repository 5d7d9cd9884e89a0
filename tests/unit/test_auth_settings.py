"""Authentication flags and environment variables (cli_options.auth_options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from longrun_core.auth.oidc_limits import GOOGLE_CERTS_URL, GOOGLE_ISSUERS
from longrun_core.cli_options import auth_options, auth_settings
from longrun_core.settings import AuthenticationSettings, ServerSettings

got: list[AuthenticationSettings] = []


@click.command()
@auth_options
def probe(**kw: Any) -> None:
    got.append(auth_settings(kw))
    assert not kw  # every option consumed


def parse(args: list[str], env: dict[str, str] | None = None) -> AuthenticationSettings:
    got.clear()
    result = CliRunner().invoke(probe, args, env=env or {}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return got[0]


def test_nothing_set_is_no_authentication() -> None:
    settings = parse([])
    assert settings == AuthenticationSettings()
    assert not ServerSettings(auth=settings).authentication_configured
    assert settings.oidc_issuer_keys() == dict.fromkeys(GOOGLE_ISSUERS, GOOGLE_CERTS_URL)


def test_flags(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("")
    settings = parse(
        [
            "--oidc-audience=https://svc.example.test",
            "--oidc-issuer=https://a.example.test",
            "--oidc-certs-url=https://a.example.test/certs",
            "--oidc-jwks=https://b.example.test=https://b.example.test/jwks",
            "--max-token-lifetime=600",
            "--token-cache-entries=5",
            "--api-keys",
            "--api-key-cache-ttl=1.5",
            f"--policy-file={policy}",
        ]
    )
    assert settings.oidc_audience == "https://svc.example.test"
    assert settings.oidc_issuer_keys() == {
        "https://a.example.test": "https://a.example.test/certs",
        "https://b.example.test": "https://b.example.test/jwks",
    }
    assert (settings.max_token_lifetime, settings.token_cache_entries) == (600, 5)
    assert (settings.api_keys, settings.api_key_cache_ttl, settings.policy_file) == (
        True,
        1.5,
        policy,
    )
    assert ServerSettings(auth=settings).authentication_configured


def test_environment_variables() -> None:
    settings = parse(
        [],
        {
            "LONGRUN_OIDC_AUDIENCE": "aud",
            "LONGRUN_OIDC_ISSUERS": "i1 i2",
            "LONGRUN_OIDC_JWKS": "i3=https://i3.test/jwks",
            "LONGRUN_API_KEYS": "true",
            "LONGRUN_MAX_TOKEN_LIFETIME": "120",
        },
    )
    assert settings.oidc_audience == "aud"
    assert set(settings.oidc_issuer_keys()) == {"i1", "i2", "i3"}
    assert settings.api_keys and settings.max_token_lifetime == 120


@pytest.mark.parametrize(
    "args",
    [
        ["--oidc-jwks=no-equals"],
        ["--oidc-jwks=iss=ftp://x"],
        ["--max-token-lifetime=10"],
        ["--max-token-lifetime=999999"],
        ["--token-cache-entries=-1"],
    ],
)
def test_bad_values_are_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(probe, args).exit_code == 2


def test_a_policy_without_authentication_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("")
    with pytest.raises(ValueError, match="needs authentication"):
        ServerSettings(auth=AuthenticationSettings(policy_file=policy)).check()
    from longrun_server.__main__ import main

    result = CliRunner().invoke(main, ["--policy-file", str(policy)])
    assert result.exit_code == 2 and "needs authentication" in result.output
