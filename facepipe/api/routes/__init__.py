"""The API's routers, one per concern; facepipe/api/app.py mounts each under /v1 (and at its seed path)."""
