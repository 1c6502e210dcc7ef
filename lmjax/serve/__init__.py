"""`lmjax serve`: an OpenAI-compatible HTTP server over lmjax.infer's batching engine.

protocol (the API's JSON in and out, its errors), app (the Starlette endpoints, SSE streaming)
and server (the listening socket, uvicorn, graceful shutdown). It needs the `serve` extra
(Starlette, uvicorn); nothing else in lmjax imports it but the command line.
"""
