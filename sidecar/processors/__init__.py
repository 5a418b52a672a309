"""Built-in processor types. Importing this package registers each one by type name.

Writing a processor (`pipeline/stage.py` runs it):

1. a settings class subclassing `component.ProcessorSettings` (it has `enabled`; make the
   default what an empty config should do);
2. a class with `name`, `mutates` (may it edit the message?), `signals` (which pipelines it
   applies to) and `process(work)`: read `work.payload` (bytes, for a cheap pre-scan) and/or
   `work.message` (parsed on first use, shared with the other processors of the request),
   edit the message in place if `mutates`; never do I/O. Reading the message counts as
   editing it (the stage re-serializes) unless the processor calls `work.read_only()`; one
   that splices its edit into the bytes as well hands them over with `work.edited(bytes)`;
3. `register_processor(ProcessorFactory("type", Settings, order, create))` in its module,
   with `order` its fixed place (redaction 10, cost 20, span metrics 30), and an import
   here.
"""

from sidecar.processors import (
    llm_cost,  # noqa: F401  (cost, 20)
    redact,  # noqa: F401  (redact, 10)
    spanmetrics,  # noqa: F401  (spanmetrics, 30)
)
