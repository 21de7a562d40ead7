"""The front: the peer's network side, an asyncio (aiohttp) server in the ``pocketgrid serve`` process.

It owns every client connection (TLS, idle keep-alive, slow and half-open
ones) on an event loop, and hands complete requests to the app (gunicorn
master + one gthread worker, peer/server.py) over a private Unix socket.
docs/architecture.md ("Processes and the process model") tells why.

* :mod:`.server` -- listening, accepting, TLS (reloaded on SIGHUP), start and stop;
* :mod:`.connection` -- one client connection: its header deadline and its place in the limits;
* :mod:`.limits` -- how many connections, per address and in all; the connection-level log;
* :mod:`.proxy` -- one request: its body (deadline, size), the app's answer streamed back;
* :mod:`.headers` -- what the front tells the app about a request, and how the app trusts it;
* :mod:`.asyncio_tls` -- two adjustments of asyncio's TLS transport (the handshake alert, its buffer);
* :mod:`.app_process` -- the app as the front's child: started, watched, stopped, never left behind.
"""
