"""Webhooks: matching object events POSTed as signed JSON to HTTP receivers (README "Webhooks").

`service` matches events to the configured webhooks, `delivery` sends each webhook's queue in order with
retries, `breaker` stops hammering a dead receiver and `signing` computes `X-Vigil-Signature`.
"""
