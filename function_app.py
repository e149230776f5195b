"""Azure Functions entry point: thin triggers around gateway_core.

The HTTP trigger serves every path (route ``{*path}``, ``routePrefix: ""`` in host.json), so the function URL
is itself an Azure OpenAI endpoint. It is anonymous at the Functions level: the gateway authenticates callers.
The timer trigger (health probes) and queue trigger (cost summaries) arrive with the routing and usage issues.
"""

from pathlib import Path

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, StreamingResponse

from aigw.functions_host import FunctionsHost

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
host = FunctionsHost(Path(__file__).parent)


@app.function_name("gateway")
@app.route(route="{*path}", methods=["GET", "POST", "HEAD"], auth_level=func.AuthLevel.ANONYMOUS)
async def gateway(req: Request) -> StreamingResponse:
    return await host.handle(req)
