"""``dbtk serve``: one loaded detector behind HTTP (an ASGI app, a micro-batcher and a web page).

Only ``dbtk serve`` imports this package, and only after the ``serve`` extra (starlette, uvicorn,
python-multipart) was found, so the rest of dbtk never pays for a web stack. docs/serve.md describes the API.
"""
