"""A stand-in for the Kubernetes API server's Deployment scale subresource (no cluster
can be started here), for the supervisor's kubernetes backend through the real client.

Speaks the real paths and JSON shapes:

- ``GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` → an ``autoscaling/v1``
  ``Scale`` (``spec.replicas``; ``status.replicas`` and ``status.selector``);
- ``PATCH`` the same path with a merge or strategic-merge patch (``{"spec": {"replicas":
  N}}``) or a JSON patch (``[{"op": "replace", "path": "/spec/replicas", "value": N}]``),
  by its Content-Type; anything else is 415;
- errors as ``v1`` ``Status`` objects: 401 without the bearer token, 403 for a Deployment
  the Role's ``resourceNames`` do not list (the real RBAC message), 404 for one that does
  not exist, 422 for a negative count.

``status.replicas`` is whatever the test's controller sets (``Deployment.ready``), so a
test can run real workers for the replicas asked for.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

PATH: Final = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
MERGE_TYPES: Final = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH: Final = "application/json-patch+json"


@dataclasses.dataclass
class Deployment:
    """One Deployment as its scale subresource shows it."""

    replicas: int = 1  # spec.replicas
    ready: int = 1  # status.replicas (set by the test's controller)
    selector: str = "app.kubernetes.io/name=fleet,app.kubernetes.io/component=worker"
    uid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    resource_version: int = 1000


@dataclasses.dataclass
class Request:
    """A request as the stand-in saw it (method, path, Content-Type, body)."""

    method: str
    path: str
    content_type: str
    body: Any


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    """A ``v1`` ``Status`` failure, as the API server answers errors."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }
    return web.json_response(body, status=code)


class KubeApi:
    """The app's state: Deployments by (namespace, name), the Role's resourceNames, the token."""

    def __init__(
        self,
        *,
        token: str,
        allowed: set[tuple[str, str]],
        user: str = "system:serviceaccount:fleet:supervisor",
    ) -> None:
        self.token = token
        self.allowed = allowed
        self.user = user
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.requests: list[Request] = []
        self.on_patch: Callable[[Deployment], Awaitable[None]] | None = None

    def scale(self, namespace: str, name: str, d: Deployment) -> dict[str, Any]:
        """The ``autoscaling/v1`` ``Scale`` of a Deployment."""
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": d.uid,
                "resourceVersion": str(d.resource_version),
                "creationTimestamp": "2024-05-01T12:00:00Z",
            },
            "spec": {"replicas": d.replicas},
            "status": {"replicas": d.ready, "selector": d.selector},
        }

    def _check(self, request: web.Request, verb: str) -> web.Response | Deployment:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if (ns, name) not in self.allowed:
            return status(
                403,
                "Forbidden",
                f'deployments.apps "{name}" is forbidden: User "{self.user}" cannot {verb} '
                f'resource "deployments/scale" in API group "apps" in the namespace "{ns}"',
                name=name,
                group="apps",
                kind="deployments",
            )
        found = self.deployments.get((ns, name))
        if found is None:
            return status(
                404,
                "NotFound",
                f'deployments.apps "{name}" not found',
                name=name,
                group="apps",
                kind="deployments",
            )
        return found

    async def get(self, request: web.Request) -> web.Response:
        """``GET .../scale``."""
        self.requests.append(Request("GET", request.path, "", None))
        found = self._check(request, "get")
        if isinstance(found, web.Response):
            return found
        return web.json_response(
            self.scale(request.match_info["namespace"], request.match_info["name"], found)
        )

    async def patch(self, request: web.Request) -> web.Response:
        """``PATCH .../scale`` (merge, strategic merge or JSON patch of ``spec.replicas``)."""
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        raw = await request.text()
        try:
            body = json.loads(raw)
        except ValueError:
            return status(400, "BadRequest", f"error decoding patch: {raw[:80]!r}")
        self.requests.append(Request("PATCH", request.path, content_type, body))
        found = self._check(request, "patch")
        if isinstance(found, web.Response):
            return found
        if content_type in MERGE_TYPES and isinstance(body, dict):
            replicas = (body.get("spec") or {}).get("replicas", found.replicas)
        elif content_type == JSON_PATCH and isinstance(body, list):
            replicas = found.replicas
            for op in body:
                if op.get("op") in ("replace", "add") and op.get("path") == "/spec/replicas":
                    replicas = op.get("value")
        else:
            return status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                f"format - accepted media types include: {', '.join((JSON_PATCH, *MERGE_TYPES))}"
            )  # fmt: skip
        if not isinstance(replicas, int) or replicas < 0:
            return status(
                422,
                "Invalid",
                f'Scale.autoscaling "{request.match_info["name"]}" is invalid: spec.replicas: '
                f"Invalid value: {replicas}: must be greater than or equal to 0",
            )
        found.replicas = replicas
        found.resource_version += 1
        if self.on_patch is not None:
            await self.on_patch(found)
        return web.json_response(
            self.scale(request.match_info["namespace"], request.match_info["name"], found)
        )

    def app(self) -> web.Application:
        """The aiohttp application serving the scale subresource."""
        app = web.Application()
        app.router.add_get(PATH, self.get)
        app.router.add_patch(PATH, self.patch)
        return app
