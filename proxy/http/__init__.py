"""The HTTP surface: the aiohttp app, its errors and auth, the proxy routes, the member
routes, the check API, the admin API (``admin/``), the OpenAPI document and the pages."""
