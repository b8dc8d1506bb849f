"""Redaction by value and by field: whole secret values (as written, URL-encoded, JSON-escaped) and URL user-info,
never a fragment of another word; a secret too short to redact is refused at validate with its line and a hint."""

from __future__ import annotations

import json
import logging
import urllib.parse
from pathlib import Path

import pytest

from bankflow import log as bankflow_log
from bankflow.cli import main
from bankflow.errors import SpecError
from bankflow.log import redact_values
from bankflow.render import render_all
from bankflow.spec.loader import MIN_SECRET_LENGTH, load_spec
from tests.specs.support import BANKING, BANKING_STACK_ENV, MINIMAL, SECRETS, copy_spec, set_env

HINT = "a secret this short cannot be redacted reliably: use a longer value"


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in text)


# ---------------------------------------------------------------- whole values only

def test_a_short_value_is_not_replaced_inside_other_words() -> None:
    text = "banking: cannot connect as ab (password ab), 'ab' or \"ab\"; abc, cab, ab1 and 1ab stay"
    assert redact_values(text, ["ab"]) == (
        "banking: cannot connect as **** (password ****), '****' or \"****\"; abc, cab, ab1 and 1ab stay")


def test_a_secret_inside_a_longer_token_is_not_the_secret() -> None:
    secret = "Tr0ub4dor-pw"
    text = f"{secret} x{secret} {secret}9 {secret}_db pw={secret}; url=postgresql://u:{secret}@h/db"
    assert redact_values(text, [secret]) == (
        f"**** x{secret} {secret}9 ****_db pw=****; url=postgresql://u:****@h/db")


def test_url_encoded_and_json_escaped_forms_are_redacted() -> None:
    secret = 'p@ss w/rd"\\x+1'
    texts = [urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), json.dumps({"pw": secret}),
             f"http://user:{urllib.parse.quote(secret, safe='')}@host/"]
    for text in texts:
        redacted = redact_values(text, [secret])
        assert "****" in redacted, text
        assert "ss w" not in redacted and "ss%20w" not in redacted and "ss+w" not in redacted, redacted
    assert json.loads(redact_values(json.dumps({"pw": secret}), [secret])) == {"pw": "****"}


def test_the_longest_secret_wins() -> None:
    assert redact_values("key=abcdefgh-ijkl", ["abcdefgh", "abcdefgh-ijkl"]) == "key=****"
    assert redact_values("a=abcdefgh b=abcdefgh-ijkl", ["abcdefgh"]) == "a=**** b=****-ijkl"


def test_log_lines_are_redacted_by_whole_value(capsys: pytest.CaptureFixture[str]) -> None:
    bankflow_log.configure()
    try:
        bankflow_log.add_secrets(["ab", "Tr0ub4dor-pw"])
        logging.getLogger("bankflow.test_redaction").warning("banking cannot connect: ab, Tr0ub4dor-pw")
    finally:
        bankflow_log.reset()
    assert capsys.readouterr().err == "warning: banking cannot connect: ****, ****\n"


# ---------------------------------------------------------------- too short to redact

@pytest.mark.parametrize(("written", "environ"), [
    ("password: ab", {}),  # written in the spec
    ("password: ${SHORT_PW}", {"SHORT_PW": "ab"}),  # from the environment: the line is where it is used
])
def test_a_short_secret_is_refused_with_its_line_and_a_hint(tmp_path: Path, written: str, environ: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = _edit(copy_spec(MINIMAL, tmp_path), "  schema: shop\n", f"  schema: shop\n  {written}\n")
    with pytest.raises(SpecError) as exc:
        load_spec(spec, environ=environ)
    [issue] = [i for i in exc.value.issues if i.severity == "error"]
    assert (issue.line, issue.field, issue.hint) == (_line_of(spec, written), "source.password", HINT)
    assert "2 character(s)" in issue.message
    set_env(monkeypatch, environ)
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:{issue.line}:" in err and HINT in err


def test_eight_characters_are_enough_and_a_deferred_placeholder_is_no_secret(tmp_path: Path) -> None:
    spec = _edit(copy_spec(MINIMAL, tmp_path), "  schema: shop\n", "  schema: shop\n  password: ${PW}\n")
    assert load_spec(spec, environ={"PW": "x" * MIN_SECRET_LENGTH}).secrets == ("x" * MIN_SECRET_LENGTH,)
    deferred = load_spec(spec, environ={}, unset="defer")  # `${PW}` unset: a placeholder, neither refused ...
    assert deferred.unset == ("PW",) and deferred.secrets == ()  # ... nor redacted
    assert load_spec(spec, environ={"PW": ""}, unset="defer").secrets == ()  # `${PW}` set empty: no secret


def test_short_url_userinfo_is_refused(tmp_path: Path) -> None:
    spec = _edit(copy_spec(MINIMAL, tmp_path), "  url: file://lake\n",
                 "  url: file://lake\n  s3_endpoint: http://minio:pw@127.0.0.1:9000\n")
    with pytest.raises(SpecError) as exc:
        load_spec(spec, environ={})
    issues = [i for i in exc.value.issues if i.severity == "error"]
    assert {(i.line, i.field, i.hint) for i in issues} == {(_line_of(spec, "s3_endpoint"), "lake.s3_endpoint", HINT)}
    assert all("pw" not in i.message.replace("password", "") for i in issues)  # lengths, never the value


def test_the_test_secrets_are_long_enough() -> None:
    assert all(len(s) >= MIN_SECRET_LENGTH for s in SECRETS)


# ---------------------------------------------------------------- URL user-info is always a secret

URL_SECRETS = ("minio-S3CRET-1a2b3c", "kafka-S3CRET-4d5e6f", "kafka2-S3CRET-7a8b9c")


def test_url_userinfo_never_printed_by_plan_status_or_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from bankflow.process import free_port

    closed = free_port()  # nothing listens: status reports every service down, quickly
    variables = {**BANKING_STACK_ENV, "PGHOST": "127.0.0.1", "PGPORT": str(closed),
                 "CONNECT_URL": f"http://127.0.0.1:{closed}",
                 "S3_ENDPOINT_URL": f"http://minio-user:{URL_SECRETS[0]}@127.0.0.1:{closed}",
                 "KAFKA_BOOTSTRAP_SERVERS": f"kuser:{URL_SECRETS[1]}@127.0.0.1:{closed},"
                                            f"SASL_SSL://k2:{URL_SECRETS[2]}@127.0.0.1:{closed}"}
    set_env(monkeypatch, variables)
    spec = copy_spec(BANKING, tmp_path)
    resolved = load_spec(spec, env="stack")
    assert set(URL_SECRETS) <= set(resolved.secrets)
    assert f"minio-user:{URL_SECRETS[0]}" in resolved.secrets  # the whole user-info, too
    outputs = list(render_all(resolved).files.values())
    out = tmp_path / "plan"
    for argv in (["plan", str(spec), "--env", "stack", "--offline", "--out", str(out)],
                 ["plan", str(spec), "--env", "stack", "--offline", "--json"],
                 ["validate", str(spec), "--env", "stack", "--json"]):
        main(argv)
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
    written = [p.read_text(encoding="utf-8", errors="replace") for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix in (".sql", ".json", ".yml", ".log", ".txt", "")]
    assert any("ENDPOINT = '****@127.0.0.1:" in text for text in written)  # Snowflake's stage: redacted
    for text in outputs + written:
        for secret in (*URL_SECRETS, *SECRETS):
            assert secret not in text


def test_url_userinfo_never_printed_by_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from bankflow.process import free_port

    closed = free_port()
    spec = _edit(copy_spec(MINIMAL, tmp_path), "  url: file://lake\n", "  url: file://lake\n  s3_endpoint: ${S3_EP}\n")
    _edit(spec, "  database: shop\n", f"  database: shop\n  port: {closed}\n")
    monkeypatch.setenv("S3_EP", f"http://minio-user:{URL_SECRETS[0]}@127.0.0.1:{closed}")
    for argv in (["status", str(spec)], ["status", str(spec), "--json"]):
        main(argv)
        captured = capsys.readouterr()
        assert URL_SECRETS[0] not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert URL_SECRETS[0].encode() not in path.read_bytes(), path
