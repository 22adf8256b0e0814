"""Grafana dashboards as code, generated with Grafana's Foundation SDK.

`community-gateway dashboards` writes them to deploy/grafana/dashboards/;
`community-gateway push-dashboards` sends them to a running Grafana.
"""
