"""Azure Functions entry point: thin triggers around gateway_core.

- ``gateway`` (HTTP): every path (route ``{*path}``, ``routePrefix: ""`` in host.json) and every method (no
  ``methods=``: a listed set would have the host answer the others with its own empty 404, not the gateway's
  OpenAI-shaped error), so the function URL is itself an Azure OpenAI endpoint. Anonymous at the Functions
  level: the gateway authenticates callers. Each invocation writes its usage record (a batch and a message on
  the queue ``aigw-usage``) before it ends: after the answer was built, or at the end of a streamed one.
- ``health`` (timer, ``AIGW_HEALTH_CRON``, every 30 s): probes every backend; health is shared through the store.
- ``usage_sweep`` (timer, ``AIGW_USAGE_SWEEP_CRON``, every 5 min): summarises batches still pending (their
  message was lost or poisoned).
- ``usage_summary`` (queue ``aigw-usage``): absorbs the batch a message names into the summaries. A batch not
  found (yet) or a store error raises: the Functions runtime redelivers the message and after
  ``extensions.queues.maxDequeueCount`` (host.json, 5) deliveries moves it to ``aigw-usage-poison`` itself (on
  Functions the runtime's poison handling is the one that acts; the summariser's own is `aigw serve`'s). A body
  that is no batch id is logged and completes: redelivering it cannot help.

App settings: aigw/functions_settings.py and docs/operations.md.
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
USAGE_QUEUE = "aigw-usage"  # the Storage queue the usage writer sends to (gateway_core/storage/tables_queue.py)


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


@app.function_name("usage_sweep")
@app.timer_trigger(
    arg_name="timer", schedule=os.environ.get("AIGW_USAGE_SWEEP_CRON", "0 */5 * * * *"), run_on_startup=False
)
async def usage_sweep(timer: func.TimerRequest) -> None:
    await host.sweep_usage()


@app.function_name("usage_summary")
@app.queue_trigger(arg_name="msg", queue_name=USAGE_QUEUE, connection="AzureWebJobsStorage")
async def usage_summary(msg: func.QueueMessage) -> None:
    # The runtime has base64-decoded the message: its body is the batch id. A bad UTF-8 body is no batch id.
    await host.summarise_batch(msg.get_body().decode("utf-8", errors="replace"))
