"""A tool that opens an OpenTelemetry span in the worker, exported there in memory."""

from __future__ import annotations

from snakepit import BaseAdapter, tool


class Traced(BaseAdapter):
    def initialize(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(provider)
        self.tracer = trace.get_tracer("tool")

    @tool
    def traced(self) -> dict:
        with self.tracer.start_as_current_span("inside the tool"):
            pass
        [span] = self.exporter.get_finished_spans()
        return {"trace": span.context.trace_id, "parent": span.parent.span_id if span.parent else None}
