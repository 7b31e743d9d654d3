"""`fleet serve` (HTTP API, MCP over Streamable HTTP, dashboard) and `fleet mcp` (stdio).

``service`` does the work (the same functions as the CLI), ``api`` and ``mcp`` expose it,
``health`` checks the dependencies, ``app`` puts it all in one ASGI app served by uvicorn.
"""
