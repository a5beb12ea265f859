"""Object stores on 127.0.0.1 for tests: a static HTTP server with range requests (aiohttp, as a CDN serves
files) and an S3 server (moto's, the real S3 protocol through botocore), each in a thread of the test process."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` at ``http://127.0.0.1:<port>`` (aiohttp's static files: ranged GETs, 404 for the absent)."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_static("/", str(folder))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"], box["port"] = runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the HTTP server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(folder: Path, bucket: str = "data") -> Iterator[str]:
    """An S3 endpoint ``http://127.0.0.1:<port>`` holding ``folder``'s files under ``s3://<bucket>/``.

    Credentials are the test ones of :data:`S3_ENV` (set in this process while it runs; give them to
    subprocesses through their environment)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in S3_ENV}
    os.environ.update(S3_ENV)
    requests_log = logging.getLogger("werkzeug")  # one line per request otherwise
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, path.relative_to(folder).as_posix())
        yield endpoint
    finally:
        server.stop()
        requests_log.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
