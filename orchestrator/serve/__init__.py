"""Online serving of a bundle with Ray Serve: one shared backbone, every task, mixed-task batches.

- request.py:  POST /v1/predict bodies -> validated rows, or errors naming each field (no Ray, no torch)
- catalog.py:  the deployment-scoped actor that decides which version of each task is served (reload)
- server.py:   the Serve deployment (FastAPI ingress, @serve.batch, one fused pass per batch)
- metrics.py:  Prometheus families, Serve's own plus the server's
- app.py:      checks, then Ray, the object store puts and Serve; stop()
- status.py:   the command's live status
- loopback.py: keeps a replica's own gRPC port on loopback in the embedded cluster

Nothing is imported here, so `orchestrator.serve.request` stays light; the command imports app and status.
"""
