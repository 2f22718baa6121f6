"""An agent instrumented with the OpenTelemetry SDK only (no Fleetwarden code): GenAI semantic
conventions, exported by the OTel SDK's Prometheus exporter on ``--port``.

With ``--promoted``, the shape of a Collector that promotes resource attributes to labels
(``resource_to_telemetry_conversion``): k8s.namespace.name and k8s.deployment.name are on every
gen_ai series, and ``target_info`` has neither (so only the labels on the series can name the agent).

Reads commands on stdin, one a line, and answers "ok" on stdout after recording:

    task MODEL INPUT_TOKENS OUTPUT_TOKENS COUNT   # COUNT agent invocations, one chat call each
"""

from __future__ import annotations

import argparse
import sys

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--promoted", action="store_true", help="k8s attributes on the series, as a Collector")
    args = parser.parse_args()
    k8s = {"k8s.namespace.name": args.namespace, "k8s.deployment.name": args.deployment}
    resource = Resource.create({"service.name": args.deployment, **({} if args.promoted else k8s)})
    on_series = k8s if args.promoted else {}
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()], resource=resource)
    meter = provider.get_meter("otel-agent")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    invoke = meter.create_histogram("gen_ai.invoke_agent.duration", unit="s")
    start_http_server(args.port, addr="127.0.0.1")
    print("ready", flush=True)
    for line in sys.stdin:
        verb, model, n_in, n_out, count = line.split()
        assert verb == "task", line
        call = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": model,
                **on_series}
        for _ in range(int(count)):
            tokens.record(int(n_in), {**call, "gen_ai.token.type": "input"})
            tokens.record(int(n_out), {**call, "gen_ai.token.type": "output"})
            duration.record(0.2, call)
            invoke.record(0.5, {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": args.deployment,
                                **on_series})
        print("ok", flush=True)


if __name__ == "__main__":
    main()
