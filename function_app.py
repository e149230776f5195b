"""Azure Functions entry point: thin triggers around gateway_core.

The HTTP trigger serves every path (route ``{*path}``, ``routePrefix: ""`` in host.json) and every method (no
``methods=``: a listed set would have the host answer the others with its own empty 404, not the gateway's
OpenAI-shaped error), so the function URL is itself an Azure OpenAI endpoint. It is anonymous at the Functions
level: the gateway authenticates callers. App settings: aigw/functions_settings.py and docs/operations.md.
The timer trigger probes every backend (health shared through the store); a queue trigger for cost summaries
is not built yet (usage records and their summaries are the next piece of work).
"""

import os
from pathlib import Path

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, StreamingResponse

from aigw.functions_host import FunctionsHost
from aigw.functions_settings import configure_logging

configure_logging()
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
host = FunctionsHost(Path(__file__).parent)


@app.function_name("gateway")
@app.route(route="{*path}", auth_level=func.AuthLevel.ANONYMOUS)
async def gateway(req: Request) -> StreamingResponse:
    return await host.handle(req)


# NCRONTAB with seconds; every 30 s unless the app setting says otherwise (read at start, not per call).
@app.function_name("health")
@app.timer_trigger(
    arg_name="timer", schedule=os.environ.get("AIGW_HEALTH_CRON", "*/30 * * * * *"), run_on_startup=False
)
async def health(timer: func.TimerRequest) -> None:
    await host.check_health()
