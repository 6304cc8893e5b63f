"""The Kubernetes sidecar injector: a mutating admission webhook in its own small package.

- ``config``: :class:`~proxy.injector.config.InjectorConfig`, the operator's file, and
  every name the injector writes into pods.
- ``pod``: reading a Pod as untrusted JSON.
- ``policy``: what a pod may ask for (opt-in, allow-listed overrides, refusals; ADR 0045)
  and :func:`~proxy.injector.policy.plan_injection`, the pure planner.
- ``patch``: the JSONPatch that adds the sidecar.
- ``tls``: the serving key pair, reloaded into a fresh context and swapped on success.
- ``webhook``: the aiohttp routes, AdmissionReview in and out, and ``run()``.

Only ``proxy.entrypoints.cli`` imports this package, and it imports nothing of the rest of
``proxy`` or of ``auth`` (both enforced by import-linter).
"""
