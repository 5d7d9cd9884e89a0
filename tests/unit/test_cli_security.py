"""The CLI's TLS and credential flags: settings that cannot work are usage
errors (exit 2) before anything is sent."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from longrun_client.cli import cli


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"LONGRUN_TOKEN": ""})
    return result.exit_code, result.output


def test_a_token_is_not_sent_in_plaintext_to_another_host() -> None:
    code, output = _run("--target", "192.0.2.10:50051", "--token", "t", "list")
    assert code == 2
    assert "refusing to send credentials in plaintext to 192.0.2.10:50051" in output


def test_an_api_key_from_the_environment_counts_too() -> None:
    result = CliRunner().invoke(
        cli, ["--target", "example.com:50051", "get", "operations/x"],
        env={"LONGRUN_API_KEY": "k"},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "refusing to send credentials in plaintext" in result.output


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "me.crt"
    cert.write_text("x")
    code, output = _run("--client-cert", str(cert), "list")
    assert code == 2
    assert "a client certificate needs its key" in output


def test_a_token_and_an_id_token_audience_exclude_each_other() -> None:
    code, output = _run("--token", "t", "--id-token-audience", "https://a", "list")
    assert code == 2
    assert "not both" in output
