"""An independent oracle: Yelp's detect-secrets, with its non-entropy plugins, scans the
corpus as sent and as the redact processor leaves it. Whatever it flags in the input must
be gone from the output."""

from __future__ import annotations

import random

from detect_secrets.core.scan import scan_line
from detect_secrets.settings import transient_settings
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactProcessor, RedactSettings
from tests.unit.processors.redact_corpus import in_context, negatives

PLUGINS = [
    "ArtifactoryDetector", "AWSKeyDetector", "AzureStorageKeyDetector", "BasicAuthDetector",
    "CloudantDetector", "DiscordBotTokenDetector", "GitHubTokenDetector",
    "GitLabTokenDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "JwtTokenDetector",
    "MailchimpDetector", "NpmDetector", "OpenAIDetector", "PrivateKeyDetector",
    "PypiTokenDetector", "SendGridDetector", "SlackDetector", "SoftlayerDetector",
    "SquareOAuthDetector", "StripeDetector", "TelegramBotTokenDetector", "TwilioKeyDetector",
]


def flagged(lines: list[str]) -> list[tuple[str, str]]:
    with transient_settings({"plugins_used": [{"name": p} for p in PLUGINS]}):
        return [(s.type, line) for line in lines for s in scan_line(line)]


def test_detect_secrets_finds_nothing_in_what_is_exported() -> None:
    texts = [c[1] for seed in range(5) for c in in_context(random.Random(seed))]
    # AWS's documented example id is allowlisted on purpose; the oracle flags it
    texts += [n for n in negatives(random.Random(1)) if n != "AKIAIOSFODNN7EXAMPLE"]
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for text in texts:
        records.add().body.string_value = text
    out = Stage(Signal.LOGS, [RedactProcessor(RedactSettings())]).run(
        Batch.from_bytes(Signal.LOGS, request.SerializeToString()))
    assert out is not None
    message = out.message
    assert isinstance(message, ExportLogsServiceRequest)
    exported = [r.body.string_value for r in message.resource_logs[0].scope_logs[0].log_records]

    def lines(strings: list[str]) -> list[str]:
        return [line for s in strings for line in s.splitlines()]

    before = flagged(lines(texts))
    # the oracle is not blind to this corpus: it flags most kinds of secret in it
    assert len({kind for kind, _ in before}) >= 7, before
    assert flagged(lines(exported)) == []
