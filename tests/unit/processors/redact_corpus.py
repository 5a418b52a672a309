"""Secret and non-secret samples for the redaction tests. Secrets are assembled at run time
from a vendor prefix and random characters, so this file trips no secret scanner."""

from __future__ import annotations

import base64
import hashlib
import random
import string
import uuid

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"


def _r(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def secrets(rng: random.Random) -> dict[str, str]:
    """rule name -> a fresh secret that rule masks (the whole string is the secret)."""
    jwt_head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    jwt_body = base64.urlsafe_b64encode(
        f'{{"sub":"{_r(rng, 8)}","iat":1700000000}}'.encode()).decode().rstrip("=")
    pem = ("-----BEGIN RSA PRIVATE KEY-----\n" + _r(rng, 64, ALNUM + "+/") + "\n"
           + _r(rng, 40, ALNUM + "+/") + "\n-----END RSA PRIVATE KEY-----")
    return {
        "jwt": f"{jwt_head}.{jwt_body}.{_r(rng, 43, URLSAFE)}",
        "anthropic-key": f"sk-ant-api03-{_r(rng, 93, URLSAFE)}AA",
        "openai-key": f"sk-proj-{_r(rng, 100, URLSAFE)}",
        "sk-key": f"sk-{_r(rng, 40)}",
        "aws-access-key-id": "AKIA" + _r(rng, 16, string.ascii_uppercase + "234567"),
        "github-token": f"ghp_{_r(rng, 36)}",
        "slack-token": f"xoxb-{_r(rng, 12, string.digits)}-{_r(rng, 24)}",
        "slack-webhook": f"https://hooks.slack.com/services/T{_r(rng, 8)}/B{_r(rng, 8)}/"
                         f"{_r(rng, 24)}",
        "stripe-key": f"sk_live_{_r(rng, 24)}",
        "google-api-key": f"AIza{_r(rng, 35, URLSAFE)}",
        "private-key": pem,
        "card-number": _luhn_complete("4", 16, rng),
    }


def in_context(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(rule, text, secret part, text with the secret masked) for secrets inside prose,
    including the rules that mask only a part of their match."""
    s = secrets(rng)
    out = [(rule, f"before {secret} after", secret, f"before [REDACTED:{rule}] after")
           for rule, secret in s.items()]
    pw = _r(rng, 14)
    out.append(("url-credentials", f"dial postgres://app:{pw}@db.internal:5432/orders now",
                pw, "dial postgres://app:[REDACTED:url-credentials]@db.internal:5432/orders now"))
    tok = _r(rng, 30, URLSAFE)
    out.append(("bearer", f"Authorization: Bearer {tok}", tok,
                "Authorization: Bearer [REDACTED:bearer]"))
    aws = _r(rng, 40, ALNUM + "/+")
    out.append(("aws-secret-access-key", f"AWS_SECRET_ACCESS_KEY={aws}\nREGION=eu-west-1", aws,
                "AWS_SECRET_ACCESS_KEY=[REDACTED:aws-secret-access-key]\nREGION=eu-west-1"))
    card = _luhn_complete("51", 16, rng)
    spaced = " ".join(card[i:i + 4] for i in range(0, 16, 4))
    out.append(("card-number", f"paid with {spaced}.", spaced,
                "paid with [REDACTED:card-number]."))
    return out


def negatives(rng: random.Random) -> list[str]:
    """Strings no built-in rule may touch."""
    png = base64.b64encode(rng.randbytes(300)).decode()
    return [
        str(uuid.UUID(int=rng.getrandbits(128))),
        rng.randbytes(16).hex(),
        rng.randbytes(8).hex(),
        hashlib.sha256(rng.randbytes(8)).hexdigest(),
        hashlib.sha1(rng.randbytes(8)).hexdigest(),
        f"data:image/png;base64,{png}",
        "1.36.0", "v2.0.0-rc.1+build.5", "grpcio==1.85.0",
        "claude-sonnet-4-5-20250929", "gpt-4o-mini-2024-07-18", "gemini-2.5-pro",
        "api.openai.com", "db-primary.eu-west-1.rds.amazonaws.com",
        "1764633600000", "4111111111111112",  # epoch ms; a card number failing Luhn
        "http://host:8080/path@x", "npm install @scope/pkg@1.2.3",
        "the token validation failed", "sk-short", "the bearer of bad news",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "AKIAIOSFODNN7EXAMPLE",
        '{"model": "gpt-4o", "max_tokens": 1024, "input_tokens": 12}',
    ]


# attribute keys whose whole value the key rules redact, in the spellings apps use
SECRET_KEYS = [
    "password", "db.password", "Password", "PASSWD", "user.pwd", "client_secret",
    "CLIENT-SECRET", "api_key", "apiKey", "x-api-key", "X-Api-Key", "openai.api_key",
    "http.request.header.authorization", "http.request.header.x-api-key",
    "http.response.header.set-cookie", "Cookie", "private_key", "aws.credentials",
    "refresh_token", "github.token", "session_id", "X-Amz-Security-Token",
]

# keys the key rules must never touch (the cost processor reads them)
ALLOWED_KEYS = [
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.request.max_tokens",
    "gen_ai.token.type", "llm.token_count.prompt", "llm.usage.total_tokens",
    "ai.usage.promptTokens", "ai.settings.maxOutputTokens", "max_completion_tokens",
    "gen_ai.request.thinking.budget_tokens", "service.name", "trace_id", "span_id",
    "session.id", "app.session.id",
]
